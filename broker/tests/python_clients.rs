//! Runs the paho-mqtt (Python) suite in `tests/python` against this build's `rookery`
//! binary, so that `cargo test` covers an independent client library too. It needs
//! `python3` with `paho-mqtt` and `pytest` (`.ci/run` installs them); without them this
//! test fails with the command to fix it, rather than passing silently.

use std::path::Path;
use std::process::Command;

#[test]
fn paho_mqtt_python_suite_passes_against_the_real_binary() {
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python");
    let probe = Command::new("python3")
        .args(["-c", "import paho.mqtt, pytest"])
        .status();
    assert!(
        probe.is_ok_and(|s| s.success()),
        "python3 with paho-mqtt and pytest is needed: pip install paho-mqtt==2.1.0 pytest"
    );
    let status = Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(&suite)
        .env("ROOKERY_BIN", env!("CARGO_BIN_EXE_rookery"))
        .status()
        .expect("run pytest");
    assert!(
        status.success(),
        "the paho-mqtt suite failed (output above)"
    );
}

//! Broker (and self) resource sampling straight from /proc.

use std::fs;

/// utime + stime of a process, in clock ticks (all threads).
pub fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields after the
    // last ')' are well-formed. Field 3 (state) is the first one after it;
    // utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// System-wide (busy, total) CPU ticks summed over all CPUs (/proc/stat).
pub fn system_ticks() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    Some((total - idle, total))
}

/// Resident set size in KiB (VmRSS from /proc/PID/status).
pub fn rss_kb(pid: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_ascii_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Clock ticks per second: AT_CLKTCK from our own auxiliary vector, then
/// `getconf CLK_TCK`, then the near-universal 100.
pub fn clk_tck() -> u64 {
    const AT_CLKTCK: u64 = 17;
    if let Ok(auxv) = fs::read("/proc/self/auxv") {
        for pair in auxv.chunks_exact(16) {
            let key = u64::from_ne_bytes(pair[..8].try_into().unwrap());
            let val = u64::from_ne_bytes(pair[8..].try_into().unwrap());
            if key == AT_CLKTCK && val > 0 {
                return val;
            }
            if key == 0 {
                break;
            }
        }
    }
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_self() {
        assert!(cpu_ticks("self").is_some());
        assert!(rss_kb("self").unwrap() > 0);
        assert!(clk_tck() > 0);
        let (busy, total) = system_ticks().unwrap();
        assert!(busy <= total);
    }
}

//! Test certificates made with rcgen: a CA, server certificates for `localhost` and
//! 127.0.0.1 signed by it, and client certificates, as PEM files in a temporary directory.

#![allow(dead_code)] // each test binary uses a different subset

use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair};
use std::path::PathBuf;
use std::sync::Arc;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// A certificate authority whose files live in its own temporary directory.
pub struct Pki {
    dir: tempfile::TempDir,
    name: String,
    ca: Certificate,
    ca_key: KeyPair,
}

/// A certificate and its key, as PEM text and as files.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let ca_key = KeyPair::generate().expect("CA key");
        let ca = params.self_signed(&ca_key).expect("CA certificate");
        let pki = Pki {
            dir: tempfile::tempdir().expect("temporary directory"),
            name: name.to_string(),
            ca,
            ca_key,
        };
        std::fs::write(pki.ca_path(), pki.ca_pem()).expect("write CA");
        pki
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join(format!("{}-ca.pem", self.name))
    }

    /// A path in this PKI's directory, for files a test writes itself.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self) -> Issued {
        self.issue("server", vec!["localhost".into(), "127.0.0.1".into()])
    }

    /// A client certificate whose common name is `name`.
    pub fn client(&self, name: &str) -> Issued {
        self.issue(name, Vec::new())
    }

    fn issue(&self, name: &str, names: Vec<String>) -> Issued {
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("certificate");
        let cert_path = self.dir.path().join(format!("{}-{name}.pem", self.name));
        let key_path = self
            .dir
            .path()
            .join(format!("{}-{name}-key.pem", self.name));
        std::fs::write(&cert_path, cert.pem()).expect("write certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_path,
            key_path,
        }
    }

    /// A rustls client configuration trusting this CA, presenting `client` if given.
    pub fn client_config(&self, client: Option<&Issued>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca_pem().as_bytes()).expect("CA PEM"))
            .expect("CA added");
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some(issued) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).expect("PEM")],
                    PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).expect("key PEM"),
                )
                .expect("client certificate"),
        };
        Arc::new(config)
    }
}

//! Test certificates: a CA of the test's own and a server certificate it signs (rcgen).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// PEM files written in a directory: the CA, a server certificate and key for `names`, and a
/// client certificate and key for the user [`CLIENT_CN`].
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// The common name (so the PostgreSQL user) of the client certificate.
pub const CLIENT_CN: &str = "jetstream_cert";

impl Certs {
    /// A fresh CA and a server certificate for `names` (DNS names or IP addresses) signed by it.
    pub fn generate(dir: &Path, names: &[&str]) -> Self {
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "jetstream test CA");
        let ca_cert = ca.self_signed(&ca_key).expect("the CA certificate");
        let key = KeyPair::generate().expect("a server key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("server params");
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &ca_cert, &ca_key).expect("the server certificate");
        let client_key = KeyPair::generate().expect("a client key");
        let mut client = CertificateParams::new(Vec::<String>::new()).expect("client params");
        client.distinguished_name.push(DnType::CommonName, CLIENT_CN);
        let client_cert = client.signed_by(&client_key, &ca_cert, &ca_key).expect("the client certificate");
        let out = Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        };
        std::fs::write(&out.ca, ca_cert.pem()).expect("write ca.pem");
        std::fs::write(&out.cert, cert.pem()).expect("write server.pem");
        std::fs::write(&out.key, key.serialize_pem()).expect("write server.key");
        std::fs::write(&out.client_cert, client_cert.pem()).expect("write client.pem");
        std::fs::write(&out.client_key, client_key.serialize_pem()).expect("write client.key");
        out
    }
}

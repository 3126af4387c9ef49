//! TLS to PostgreSQL with rustls, following libpq's `sslmode` rules:
//! - `verify-full`: the certificate chains to a trusted CA and names the host in the URL;
//! - `verify-ca`: it chains to a trusted CA (any name: for servers reached by an address their
//!   certificate does not list);
//! - `require`/`prefer`: encrypted but not authenticated, unless `sslrootcert` is given, which
//!   makes them `verify-ca` (as libpq does).
//!
//! The trusted CAs are `sslrootcert=FILE`, or the system's store (`sslrootcert=system`, and the
//! default for the `verify-*` modes). `sslcert`/`sslkey` present a client certificate.
//!
//! Handshake failures are turned into messages that say what failed ([`describe`]): rustls's own
//! (`invalid peer certificate: UnknownIssuer`) reach the user only wrapped in "error performing
//! TLS handshake".

use std::sync::Arc;

use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::storage::StoreError;
use crate::storage::url::{PgTls, SslMode};

/// The connector for `tls` (used only when the URL's mode asks for TLS).
pub(super) fn connector(tls: &PgTls) -> Result<MakeRustlsConnect, StoreError> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let verifier: Arc<dyn ServerCertVerifier> = match (tls.mode, &tls.root_cert) {
        (SslMode::Disable, _) | (SslMode::Prefer | SslMode::Require, None) => Arc::new(Unauthenticated { algorithms }),
        (SslMode::VerifyFull, root) => webpki(roots(root.as_deref())?, &provider)?,
        (SslMode::VerifyCa | SslMode::Prefer | SslMode::Require, root) => {
            Arc::new(AnyName { inner: webpki(roots(root.as_deref())?, &provider)? })
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS configuration: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match &tls.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| bad(format!("sslcert={cert}: {e}")))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(format!("sslkey={key}: {e}")))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| bad(format!("sslcert/sslkey: {e}")))?
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

fn bad(why: String) -> StoreError {
    StoreError::BadUrl(why)
}

/// The CAs to trust: a PEM file, or the system's store.
fn roots(root_cert: Option<&str>) -> Result<RootCertStore, StoreError> {
    let mut roots = RootCertStore::empty();
    match root_cert {
        None | Some("system") => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(bad(
                    "no CA certificates in the system's store: give the server's CA as sslrootcert=FILE".into()
                ));
            }
        }
        Some(file) => {
            let certs = CertificateDer::pem_file_iter(file)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| bad(format!("sslrootcert={file}: {e}")))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(bad(format!("sslrootcert={file}: no CA certificate in the file")));
            }
        }
    }
    Ok(roots)
}

fn webpki(roots: RootCertStore, provider: &Arc<CryptoProvider>) -> Result<Arc<WebPkiServerVerifier>, StoreError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| bad(format!("sslrootcert: {e}")))
}

/// `verify-ca`: the chain is checked, the name is not.
#[derive(Debug)]
struct AnyName {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, tokio_rustls::rustls::Error> {
        match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(tokio_rustls::rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `require`/`prefer` without `sslrootcert`: libpq's encryption without authentication. The
/// handshake's signatures are still checked (the key exchange is with the certificate's owner),
/// the certificate itself is not.
#[derive(Debug)]
struct Unauthenticated {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Unauthenticated {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, tokio_rustls::rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        tokio_rustls::rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        tokio_rustls::rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// What a failed TLS handshake means for the user, when `e` holds a rustls error.
pub(super) fn describe(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        // tokio-rustls wraps the rustls error in an `io::Error`, whose `source` skips it.
        let inner = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|r| r as &(dyn std::error::Error + 'static));
        if let Some(tls) =
            c.downcast_ref::<tokio_rustls::rustls::Error>().or_else(|| inner.and_then(|i| i.downcast_ref()))
        {
            return Some(match tls {
                // BadSignature: a CA of the same name as a trusted one, but not it.
                tokio_rustls::rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer | CertificateError::BadSignature,
                ) => "TLS: certificate verification failed: the server's certificate is not signed by a trusted CA \
                     (check sslrootcert)"
                    .to_string(),
                tokio_rustls::rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                    expected,
                    presented,
                }) => format!(
                    "TLS: certificate verification failed: the server's certificate is not valid for the host \
                     name {} (it names {}); connect by one of those names, or use sslmode=verify-ca",
                    expected.to_str(),
                    presented.join(", ")
                ),
                tokio_rustls::rustls::Error::InvalidCertificate(CertificateError::NotValidForName) => {
                    "TLS: certificate verification failed: the server's certificate is not valid for the host name \
                     in the URL; connect by a name it lists, or use sslmode=verify-ca"
                        .to_string()
                }
                other => format!("TLS: {other}"),
            });
        }
        cause = c.source();
    }
    None
}

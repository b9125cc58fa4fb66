//! The client listener's certificate (`tls.cert_file`, `tls.key_file`), re-read on reload
//! without restarting the listener: handshakes take whatever pair was loaded last, and a pair
//! that does not load keeps the old one serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};

/// The certificate chain and key the TLS listener presents.
#[derive(Debug)]
pub struct Certificates {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificates {
    /// Loads the pair; the error names the file and what is wrong with it.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Certificates, String> {
        Ok(Certificates {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: RwLock::new(Arc::new(load_pair(cert_file, key_file)?)),
        })
    }

    /// Reads the files again; on an error the pair in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let pair = load_pair(&self.cert_file, &self.key_file)?;
        *self.current.write() = Arc::new(pair);
        Ok(())
    }

    /// The certificate in use (the end entity's DER), for tests and the log.
    pub fn leaf_der(&self) -> Vec<u8> {
        self.current.read().cert[0].as_ref().to_vec()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

fn load_pair(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, String> {
    pingora::tls::install_default_crypto_provider();
    let read = |path: &Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    let certs = rustls_pemfile::certs(&mut read(cert_file)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no CERTIFICATE block (PEM) in the file",
            cert_file.display()
        ));
    }
    let key = rustls_pemfile::private_key(&mut read(key_file)?.as_slice())
        .map_err(|e| format!("{}: {e}", key_file.display()))?
        .ok_or_else(|| {
            format!(
                "{}: no PRIVATE KEY block (PEM) in the file",
                key_file.display()
            )
        })?;
    let provider = CryptoProvider::get_default().expect("installed above");
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: {e}", key_file.display()))?;
    let pair = CertifiedKey::new(certs, signing);
    pair.keys_match().map_err(|e| {
        format!(
            "{} does not hold the key of {}: {e}",
            key_file.display(),
            cert_file.display()
        )
    })?;
    Ok(pair)
}

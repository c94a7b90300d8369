//! The one way to build an HTTP client: rustls with the `ring` provider (the same TLS stack
//! as the broker connection, so no second crypto library is compiled).

use std::sync::Once;

/// Installs `ring` as the process's TLS crypto provider (idempotent). Every HTTP client
/// of the workspace, ours and object_store's, needs it.
pub fn install_crypto_provider() {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        // Fails only if another provider was installed first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A `reqwest` client builder with TLS ready. Use it instead of `reqwest::Client::builder()`.
pub fn client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
}

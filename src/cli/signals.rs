//! SIGINT and SIGTERM to a cancellation token: the first asks to drain, a second exits at once.
//!
//! The library takes a [`CancellationToken`] and drains on its own deadline; only the command
//! line knows about signals.

use tokio_util::sync::CancellationToken;

use super::Outcome;

/// Returns a token cancelled on the first SIGINT/SIGTERM. The second signal exits the process
/// immediately ([`Outcome::Interrupted`]); the broker then requeues whatever was unacked.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("Shutdown requested; draining. Send the signal again to exit at once.");
        trigger.cancel();
        wait_for_signal().await;
        tracing::warn!("Second signal; exiting without draining.");
        std::process::exit(Outcome::Interrupted.code().into());
    });
    token
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(error) => {
            tracing::error!(%error, "Cannot listen for SIGTERM; only Ctrl-C will stop the process.");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

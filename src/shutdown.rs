//! Process shutdown: SIGINT or SIGTERM cancels a token; a second signal exits at once.
//!
//! Components take a [`CancellationToken`] and drain on their own deadline; nothing here
//! knows about queues or sockets.

use tokio_util::sync::CancellationToken;

/// Exit code for a second signal: the process stops without draining.
pub const FORCED_EXIT_CODE: i32 = 130;

/// Returns a token cancelled on the first SIGINT/SIGTERM. The second signal exits the process
/// immediately; the broker then requeues whatever was unacked.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("Shutdown requested; draining. Send the signal again to exit at once.");
        trigger.cancel();
        wait_for_signal().await;
        tracing::warn!("Second signal; exiting without draining.");
        std::process::exit(FORCED_EXIT_CODE);
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

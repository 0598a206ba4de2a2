//! `warren sim upstream`: a WebSocket event source that speaks the upstream's protocol (bearer
//! handshake, `subscribe` with topics and `resumeFrom`, a replay buffer) and injects faults.
//!
//! One generator puts events on the stream; each connection sends them from its own position
//! in the replay buffer, so a resume is a replay followed by live events. The generator starts
//! when the first client subscribes. With `rate` 0 it stays a few thousand events ahead of the
//! fastest subscriber, which is the sim's maximum rate.
//!
//! # The ledger
//! `--ledger FILE` gets one line `<eventId> <type>` per event, written and flushed when the
//! event is put on the stream, before any client can receive it; each distinct eventId once,
//! whatever duplicates and replays follow. Malformed frames are recorded as `# malformed <kind>`.

mod session;
mod settings;
mod stream;

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use session::serve;
use stream::{Buffer, generate};

use crate::SimError;

pub use settings::{Faults, MalformedKind, OVERSIZED_FRAME_BYTES, UpstreamSettings};

/// What the generator and every connection share: the buffer, the pace signals, the ledger.
struct Shared {
    settings: UpstreamSettings,
    buffer: Mutex<Buffer>,
    end: watch::Sender<u64>,
    subscribed: watch::Sender<bool>,
    sent_up_to: watch::Sender<u64>,
    ledger: Option<Mutex<BufWriter<File>>>,
    malformed_sent: AtomicU64,
    key_digest: Option<[u8; 32]>,
}

impl Shared {
    fn record(&self, lines: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>) {
        if let Some(ledger) = &self.ledger {
            let mut w = ledger.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(error) = lines(&mut w).and_then(|_| w.flush()) {
                tracing::error!(%error, "Cannot write the ledger.");
            }
        }
    }
}

/// Serves the simulated upstream on `listener` until `shutdown` is cancelled.
pub async fn run(
    listener: TcpListener,
    settings: UpstreamSettings,
    shutdown: CancellationToken,
) -> Result<(), SimError> {
    let ledger = match &settings.ledger {
        Some(path) => Some(Mutex::new(BufWriter::new(File::create(path).map_err(
            |source| SimError::Io {
                path: path.clone(),
                source,
            },
        )?))),
        None => None,
    };
    let shared = Arc::new(Shared {
        key_digest: settings
            .agent_key
            .as_deref()
            .map(|k| Sha256::digest(k.as_bytes()).into()),
        settings,
        buffer: Mutex::new(Buffer {
            start: 0,
            events: VecDeque::new(),
        }),
        end: watch::Sender::new(0),
        subscribed: watch::Sender::new(false),
        sent_up_to: watch::Sender::new(0),
        ledger,
        malformed_sent: AtomicU64::new(0),
    });
    let tracker = TaskTracker::new();
    tracker.spawn(generate(shared.clone(), shutdown.clone()));
    let mut connections = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    connections += 1;
                    let _ = tcp.set_nodelay(true);
                    tracing::debug!(%peer, connection = connections, "Client connected.");
                    tracker.spawn(serve(shared.clone(), tcp, connections, shutdown.clone()));
                }
                Err(error) => {
                    tracing::warn!(%error, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    shared.record(|_| Ok(()));
    Ok(())
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

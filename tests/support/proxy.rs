//! A TCP proxy between a process and the broker, for fault injection: added latency, a black
//! hole (connections stay open, bytes vanish: half-open, only heartbeats notice), resets, and
//! refusing new connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward bytes as they come.
    Pass,
    /// Forward bytes after a delay.
    Latency(Duration),
    /// Keep connections open, forward nothing.
    BlackHole,
    /// Close every connection and refuse new ones.
    Refuse,
}

/// A running proxy. Dropping it stops accepting.
pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    resets: watch::Sender<u64>,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy on 127.0.0.1:0 forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let (mode, mode_rx) = watch::channel(Mode::Pass);
        let (resets, resets_rx) = watch::channel(0u64);
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if *mode_rx.borrow() == Mode::Refuse {
                    drop(client);
                    continue;
                }
                counter.fetch_add(1, Ordering::Relaxed);
                let (mode_rx, resets_rx) = (mode_rx.clone(), resets_rx.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    pipe(client, server, mode_rx, resets_rx).await;
                });
            }
        });
        Self {
            addr,
            mode,
            resets,
            accepted,
            task,
        }
    }

    /// An AMQP URL that goes through the proxy, with a short heartbeat so a black hole is noticed.
    pub fn amqp_url(&self, heartbeat_secs: u16) -> String {
        format!(
            "amqp://guest:guest@{}/%2f?heartbeat={heartbeat_secs}",
            self.addr
        )
    }

    /// Changes what happens to traffic from now on.
    pub fn set(&self, mode: Mode) {
        let _ = self.mode.send(mode);
    }

    /// Resets every open connection (the next connections pass again).
    pub fn reset_all(&self) {
        self.resets.send_modify(|n| *n += 1);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.reset_all();
    }
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    mode: watch::Receiver<Mode>,
    mut resets: watch::Receiver<u64>,
) {
    resets.mark_unchanged();
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = copy(cr, sw, mode.clone());
    let down = copy(sr, cw, mode.clone());
    let mut mode = mode;
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = resets.changed() => {}
        _ = async { while mode.changed().await.is_ok() { if *mode.borrow() == Mode::Refuse { return; } } std::future::pending::<()>().await } => {}
    }
}

async fn copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let current = *mode.borrow();
        match current {
            Mode::Pass => {}
            Mode::Latency(d) => tokio::time::sleep(d).await,
            Mode::BlackHole => continue,
            Mode::Refuse => return,
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

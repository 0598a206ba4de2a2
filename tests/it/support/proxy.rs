//! A TCP proxy between a process and the broker, for fault injection: added latency, a black
//! hole (connections stay open, bytes vanish: half-open, only heartbeats notice), resets, and
//! refusing new connections. It can also record the AMQP methods on each connection, so a test
//! can see what the process itself did (a `basic.nack`) apart from what the broker does on its
//! own (requeueing on connection close), and what it holds unacked at any moment. And it can
//! coalesce the broker's publisher confirms into multiple-acks, as a broker may.
//!
//! A test that uses it must run on a multi-thread runtime: the proxy's tasks have to keep
//! forwarding while the test body blocks (`rabbitmqctl`, `Warren::wait_exit`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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

/// One AMQP method frame on a connection, in the order the proxy saw them. `Debug` leaves the
/// arguments out: `connection.start-ok` carries the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Method {
    /// Sent by the client (else by the broker).
    pub from_client: bool,
    pub channel: u16,
    pub class: u16,
    pub method: u16,
    /// The method's arguments, raw.
    pub args: Vec<u8>,
}

impl std::fmt::Debug for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let from = if self.from_client { "client" } else { "broker" };
        write!(
            f,
            "{from} {}.{} ch{}",
            self.class, self.method, self.channel
        )?;
        if let Some((_, tag)) = self.delivery() {
            write!(f, " tag {tag}")?;
        } else if self.settles().is_some()
            && let Some((tag, bits)) = self.tag_and_bits()
        {
            write!(f, " tag {tag} bits {bits:#b}")?;
        }
        Ok(())
    }
}

impl Method {
    fn is(&self, from_client: bool, class: u16, method: u16) -> bool {
        self.from_client == from_client && (self.class, self.method) == (class, method)
    }

    fn tag_and_bits(&self) -> Option<(u64, u8)> {
        let tag = u64::from_be_bytes(self.args.get(..8)?.try_into().ok()?);
        Some((tag, self.args.get(8).copied().unwrap_or(0)))
    }

    /// The client's `basic.consume`.
    pub fn is_consume(&self) -> bool {
        self.is(true, 60, 20)
    }

    /// `(channel, delivery tag)` of a `basic.deliver` from the broker.
    pub fn delivery(&self) -> Option<(u16, u64)> {
        if !self.is(false, 60, 60) {
            return None;
        }
        // consumer-tag (shortstr), then the delivery tag.
        let skip = 1 + *self.args.first()? as usize;
        let tag = u64::from_be_bytes(self.args.get(skip..skip + 8)?.try_into().ok()?);
        Some((self.channel, tag))
    }

    /// `(channel, delivery tag)` of the client's `basic.nack` with `requeue = true`.
    pub fn nack_requeue(&self) -> Option<(u16, u64)> {
        if !self.is(true, 60, 120) {
            return None;
        }
        let (tag, bits) = self.tag_and_bits()?;
        (bits & 0b10 != 0).then_some((self.channel, tag))
    }

    /// `(channel, delivery tag)` of the client's `basic.ack`.
    pub fn ack(&self) -> Option<(u16, u64)> {
        if !self.is(true, 60, 80) {
            return None;
        }
        Some((self.channel, self.tag_and_bits()?.0))
    }

    /// `(channel, delivery tag, multiple)` of the client's ack, nack or reject.
    fn settles(&self) -> Option<(u16, u64, bool)> {
        let (tag, bits) = self.tag_and_bits()?;
        if self.is(true, 60, 80) || self.is(true, 60, 120) {
            Some((self.channel, tag, bits & 1 != 0))
        } else if self.is(true, 60, 90) {
            Some((self.channel, tag, false))
        } else {
            None
        }
    }

    /// The client's `channel.close` or `connection.close`.
    pub fn is_close(&self) -> bool {
        self.is(true, 20, 40) || self.is(true, 10, 50)
    }
}

/// Deliveries on a connection that its client has not acked, nacked or rejected (yet), as
/// `(channel, delivery tag)`: exactly what the client holds, with no broker stats lag.
pub fn unsettled(methods: &[Method]) -> BTreeSet<(u16, u64)> {
    let mut held = BTreeSet::new();
    for m in methods {
        if let Some(d) = m.delivery() {
            held.insert(d);
        } else if let Some((channel, tag, multiple)) = m.settles() {
            if multiple {
                held.retain(|&(c, t)| c != channel || (tag != 0 && t > tag));
            } else {
                held.remove(&(channel, tag));
            }
        }
    }
    held
}

/// One accepted connection's own black hole, and when it last forwarded a byte (epoch ms).
#[derive(Default)]
struct Conn {
    hole: AtomicBool,
    last_byte: AtomicU64,
}

/// Methods seen so far, one list per accepted connection.
type Seen = Arc<Mutex<Vec<Arc<Mutex<Vec<Method>>>>>>;

/// A running proxy. Dropping it stops accepting.
pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    resets: watch::Sender<u64>,
    accepted: Arc<AtomicUsize>,
    merged: Arc<AtomicUsize>,
    /// Every accepted connection's own state, in accept order.
    conns: Arc<Mutex<Vec<Arc<Conn>>>>,
    seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy on 127.0.0.1:0 forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        Self::start_with(upstream, false, false).await
    }

    /// [`Proxy::start`], holding back the broker's publisher confirms (`basic.ack`) and
    /// passing them on as one multiple-ack per read, up to the highest tag below which every
    /// publish is confirmed. Returns and every other frame pass at once, so a multiple-ack
    /// arrives after the returns of several of the publishes it confirms. AMQP allows that;
    /// RabbitMQ itself confirms an unroutable publish right after returning it. Broker
    /// `basic.nack`s are not expected and pass as they are.
    pub async fn start_coalescing_confirms(upstream: SocketAddr) -> Self {
        Self::start_with(upstream, false, true).await
    }

    /// [`Proxy::start`], also keeping every method on every connection (see [`Proxy::methods`]).
    pub async fn start_recording(upstream: SocketAddr) -> Self {
        Self::start_with(upstream, true, false).await
    }

    async fn start_with(upstream: SocketAddr, record: bool, coalesce: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let (mode, mode_rx) = watch::channel(Mode::Pass);
        let (resets, resets_rx) = watch::channel(0u64);
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let merged = Arc::new(AtomicUsize::new(0));
        let merges = merged.clone();
        let conns: Arc<Mutex<Vec<Arc<Conn>>>> = Arc::default();
        let all_conns = conns.clone();
        let seen: Seen = Arc::default();
        let all_seen = seen.clone();
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
                let methods = record.then(|| {
                    let m = Arc::new(Mutex::new(Vec::new()));
                    all_seen.lock().unwrap().push(m.clone());
                    m
                });
                let (mode_rx, resets_rx) = (mode_rx.clone(), resets_rx.clone());
                let confirms = coalesce.then(|| Confirms::new(merges.clone()));
                let this = Arc::new(Conn::default());
                all_conns.lock().unwrap().push(this.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    pipe(client, server, mode_rx, resets_rx, methods, confirms, this).await;
                });
            }
        });
        Self {
            addr,
            mode,
            resets,
            accepted,
            merged,
            conns,
            seen,
            task,
        }
    }

    /// The methods seen so far on each connection, both ways (empty unless recording).
    pub fn methods(&self) -> Vec<Vec<Method>> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|m| m.lock().unwrap().clone())
            .collect()
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

    /// Multiple-acks passed on that confirm more than one publish, when coalescing confirms.
    pub fn merged_confirms(&self) -> usize {
        self.merged.load(Ordering::Relaxed)
    }

    /// Black-holes connection `i` (in accept order) alone, from now on.
    pub fn black_hole_one(&self, i: usize) {
        self.conn(i).hole.store(true, Ordering::Relaxed);
    }

    /// When connection `i` (in accept order) last forwarded a byte either way, epoch ms: in a
    /// black hole, the last byte either end received.
    pub fn last_byte_ms(&self, i: usize) -> u64 {
        self.conn(i).last_byte.load(Ordering::Relaxed)
    }

    fn conn(&self, i: usize) -> Arc<Conn> {
        self.conns.lock().unwrap()[i].clone()
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
    methods: Option<Arc<Mutex<Vec<Method>>>>,
    confirms: Option<Confirms>,
    conn: Arc<Conn>,
) {
    resets.mark_unchanged();
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = copy(
        cr,
        sw,
        mode.clone(),
        methods.clone().map(|m| Frames::new(m, true)),
        None,
        conn.clone(),
    );
    let down = copy(
        sr,
        cw,
        mode.clone(),
        methods.map(|m| Frames::new(m, false)),
        confirms,
        conn,
    );
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
    mut frames: Option<Frames>,
    mut confirms: Option<Confirms>,
    conn: Arc<Conn>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let current = *mode.borrow();
        if conn.hole.load(Ordering::Relaxed) {
            continue;
        }
        match current {
            Mode::Pass => {}
            Mode::Latency(d) => tokio::time::sleep(d).await,
            Mode::BlackHole => continue,
            Mode::Refuse => return,
        }
        if let Some(frames) = &mut frames {
            frames.feed(&buf[..n]);
        }
        let out = match &mut confirms {
            Some(confirms) => confirms.rewrite(&buf[..n]),
            None => buf[..n].to_vec(),
        };
        if to.write_all(&out).await.is_err() {
            return;
        }
        conn.last_byte.store(super::now_ms(), Ordering::Relaxed);
    }
}

/// The broker's side of a connection with its publisher confirms held back (see
/// [`Proxy::start_coalescing_confirms`]).
struct Confirms {
    pending: Vec<u8>,
    /// Per channel: the tags confirmed and not yet passed on, and the highest passed on.
    channels: std::collections::HashMap<u16, (BTreeSet<u64>, u64)>,
    /// Multiple-acks passed on that confirm more than one publish.
    merged: Arc<AtomicUsize>,
}

impl Confirms {
    fn new(merged: Arc<AtomicUsize>) -> Self {
        Self {
            pending: Vec::new(),
            channels: Default::default(),
            merged,
        }
    }

    /// Every whole frame in `bytes` (and what was left over before), with `basic.ack`s taken
    /// out and one multiple-ack per channel appended where the confirmed run grew.
    fn rewrite(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::with_capacity(self.pending.len());
        let mut at = 0;
        while let Some(f) = Frame::at(&self.pending[at..]) {
            let p = f.payload;
            if f.kind == 1 && p.len() >= 13 && p[..4] == [0, 60, 0, 80] {
                let tag = u64::from_be_bytes(p[4..12].try_into().unwrap());
                let (acked, passed) = self.channels.entry(f.channel).or_default();
                if p[12] & 1 != 0 {
                    acked.extend(*passed + 1..=tag);
                } else {
                    acked.insert(tag);
                }
            } else {
                out.extend_from_slice(&self.pending[at..at + f.len]);
            }
            at += f.len;
        }
        self.pending.drain(..at);
        for (&channel, (acked, passed)) in &mut self.channels {
            let mut upto = *passed;
            while acked.remove(&(upto + 1)) {
                upto += 1;
            }
            if upto > *passed {
                if upto > *passed + 1 {
                    self.merged.fetch_add(1, Ordering::Relaxed);
                }
                *passed = upto;
                out.extend_from_slice(&[1]);
                out.extend_from_slice(&channel.to_be_bytes());
                out.extend_from_slice(&13u32.to_be_bytes());
                out.extend_from_slice(&[0, 60, 0, 80]);
                out.extend_from_slice(&upto.to_be_bytes());
                out.extend_from_slice(&[1, 0xCE]);
            }
        }
        out
    }
}

/// Splits one direction of a connection into AMQP 0-9-1 frames and keeps the method frames:
/// each frame is type (1), channel (2), size (4), payload, 0xCE; the client starts with the
/// 8-byte protocol header. Frames are recorded before they are forwarded.
struct Frames {
    from_client: bool,
    pending: Vec<u8>,
    header_seen: bool,
    out: Arc<Mutex<Vec<Method>>>,
}

impl Frames {
    fn new(out: Arc<Mutex<Vec<Method>>>, from_client: bool) -> Self {
        Self {
            from_client,
            pending: Vec::new(),
            header_seen: !from_client,
            out,
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        if !self.header_seen {
            if self.pending.len() < 8 {
                return;
            }
            self.pending.drain(..8);
            self.header_seen = true;
        }
        let mut at = 0;
        while let Some(f) = Frame::at(&self.pending[at..]) {
            let payload = f.payload;
            if f.kind == 1 && payload.len() >= 4 {
                self.out.lock().unwrap().push(Method {
                    from_client: self.from_client,
                    channel: f.channel,
                    class: u16::from_be_bytes([payload[0], payload[1]]),
                    method: u16::from_be_bytes([payload[2], payload[3]]),
                    args: payload[4..].to_vec(),
                });
            }
            at += f.len;
        }
        self.pending.drain(..at);
    }
}

/// One whole AMQP 0-9-1 frame at the start of a buffer: type (1), channel (2), size (4),
/// payload, 0xCE.
struct Frame<'a> {
    kind: u8,
    channel: u16,
    payload: &'a [u8],
    /// The whole frame's length.
    len: usize,
}

impl<'a> Frame<'a> {
    /// The frame `bytes` starts with, if all of it is there.
    fn at(bytes: &'a [u8]) -> Option<Self> {
        let size = u32::from_be_bytes(bytes.get(3..7)?.try_into().ok()?) as usize;
        let len = 7 + size + 1;
        (bytes.len() >= len).then(|| Frame {
            kind: bytes[0],
            channel: u16::from_be_bytes([bytes[1], bytes[2]]),
            payload: &bytes[7..7 + size],
            len,
        })
    }
}

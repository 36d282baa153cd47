//! The gateway harnesses' load generator: thousands of WebSocket and SSE clients in a few
//! threads, reading with receive timestamps and parsing as little as possible.
//!
//! Each thread owns its share of the connections and one epoll instance (mio): no task, channel
//! or allocation per connection or per message. A readable socket is read into the thread's one
//! 64 KiB buffer with a [`Stamp`]: the instant the read returned, and the time the kernel
//! received the data (`SO_TIMESTAMPING`, software receive timestamps), which is when a client on
//! another machine would have had it, whatever this process's threads were doing on the shared
//! cores. The frames in the buffer are cut out in place, and
//! only a frame or line split across reads leaves a few bytes in the connection's own (normally
//! empty) buffer. Of each delivery only the round id is looked at, without parsing it all:
//! `"round_id":<digits>` in the gateway's JSON (WebSocket text frame or SSE `data:`), the
//! `round_id` key of the MessagePack payload in a NATS `MSG`. The connections are:
//!
//! - [`Protocol::GatewayWs`]: `GET <path>` upgraded to a WebSocket on the gateway; pings are
//!   answered, a close frame ends the connection (counted in [`Status::closed`]).
//! - [`Protocol::Sse`]: `GET <path>` with `Accept: text/event-stream`; the chunked body is
//!   de-chunked and cut into SSE blocks.
//! - [`Protocol::NatsWs`]: nats-server's own WebSocket listener speaking the NATS protocol:
//!   `CONNECT`, `SUB <subject>`, `PING`, and the connection counts as subscribed once the `PONG`
//!   came back; server `PING`s are answered.
//!
//! Handshakes are done blocking, one connection after the other, by the thread that will own
//! the connection; [`Clients::wait_connected`] tells when all are up. Deliveries go to a
//! [`Sink`] per thread, locked once per batch of ready sockets.

use std::io::{self, IoSliceMut, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use mio::{Events, Interest, Poll, Token};
use nix::sys::socket::{self as sock, sockopt, ControlMessageOwned, MsgFlags, TimestampingFlag};
use socket2::{Domain, SockAddr, Socket, Type};

/// What a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// The gateway's WebSocket: one JSON round per text frame.
    GatewayWs,
    /// The gateway's SSE: one JSON round per `data:` line.
    Sse,
    /// nats-server's WebSocket listener: NATS protocol, MessagePack payloads.
    NatsWs,
}

/// One client to open.
#[derive(Debug, Clone)]
pub struct Spec {
    pub protocol: Protocol,
    pub addr: SocketAddr,
    /// The request path (`/ws/crash`, `/sse/crash`), or for [`Protocol::NatsWs`] the subject.
    pub target: String,
    /// Local address to bind before connecting (another 127.0.0.x when one address runs out of
    /// ephemeral ports); `None` lets the kernel choose.
    pub source: Option<IpAddr>,
}

/// When a delivery arrived.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    /// The instant the read returned (this process's clock for intervals).
    pub read: Instant,
    /// When the client received the data (wall clock, to compare with PostgreSQL's commit
    /// timestamps): the kernel's receive timestamp of the last segment read on the load
    /// generator's sockets; the wall clock when the read returned for clients and bytes without
    /// one ([`Stamp::now`]).
    pub received: SystemTime,
}

impl Stamp {
    /// Both clocks now: for a client that gets no kernel timestamp (a Tokio client task, bytes
    /// that came with a handshake).
    pub fn now() -> Stamp {
        Stamp {
            read: Instant::now(),
            received: SystemTime::now(),
        }
    }
}

/// Where a thread's deliveries go.
pub trait Sink: Send + 'static {
    /// Round `round_id` arrived on a `protocol` connection at `at`.
    fn delivered(&mut self, protocol: Protocol, round_id: i64, at: Stamp);
}

/// Connection counts, shared by the threads.
#[derive(Debug, Default)]
pub struct Status {
    /// Handshakes done (for NATS: subscription confirmed).
    pub connected: AtomicUsize,
    /// Connections the server ended (close frame, end of stream, reset).
    pub closed: AtomicUsize,
}

/// Running clients. Dropping it stops the threads and closes every connection.
pub struct Clients<S: Sink> {
    pub status: Arc<Status>,
    /// One sink per thread; lock to read what it gathered.
    pub sinks: Vec<Arc<Mutex<S>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<anyhow::Result<()>>>,
    total: usize,
}

impl<S: Sink> Clients<S> {
    /// Opens `specs` from `threads` threads (round-robin), each with its own sink.
    pub fn start(specs: Vec<Spec>, threads: usize, mut sink: impl FnMut() -> S) -> Clients<S> {
        let threads = threads.max(1);
        let total = specs.len();
        let mut shares: Vec<Vec<Spec>> = vec![Vec::new(); threads];
        for (i, spec) in specs.into_iter().enumerate() {
            shares[i % threads].push(spec);
        }
        let status = Arc::new(Status::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut sinks = Vec::new();
        let mut handles = Vec::new();
        for (i, share) in shares.into_iter().enumerate() {
            let sink = Arc::new(Mutex::new(sink()));
            sinks.push(Arc::clone(&sink));
            let (status, stop) = (Arc::clone(&status), Arc::clone(&stop));
            let handle = std::thread::Builder::new()
                .name(format!("loadgen-{i}"))
                .spawn(move || run_thread(share, &sink, &status, &stop))
                .unwrap();
            handles.push(handle);
        }
        Clients {
            status,
            sinks,
            stop,
            threads: handles,
            total,
        }
    }

    /// Waits until every client is connected (and subscribed), failing on a thread's error.
    pub async fn wait_connected(&mut self, deadline: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while self.status.connected.load(Ordering::Acquire) < self.total {
            if let Some(i) = self.threads.iter().position(JoinHandle::is_finished) {
                let result = self.threads.remove(i).join();
                return match result {
                    Ok(Err(err)) => Err(err.context("opening the clients")),
                    _ => bail!("a load generator thread ended while connecting"),
                };
            }
            if start.elapsed() > deadline {
                bail!(
                    "{} of {} clients connected within {deadline:?}",
                    self.status.connected.load(Ordering::Acquire),
                    self.total
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// How many connections the server has ended so far.
    pub fn closed(&self) -> usize {
        self.status.closed.load(Ordering::Acquire)
    }

    /// Stops the threads and closes every connection.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop_threads()
    }

    fn stop_threads(&mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Release);
        for handle in self.threads.drain(..) {
            match handle.join() {
                Ok(result) => result?,
                Err(_) => bail!("a load generator thread panicked"),
            }
        }
        Ok(())
    }
}

impl<S: Sink> Drop for Clients<S> {
    fn drop(&mut self) {
        let _ = self.stop_threads();
    }
}

fn run_thread<S: Sink>(
    specs: Vec<Spec>,
    sink: &Mutex<S>,
    status: &Status,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut poll = Poll::new()?;
    let mut conns: Vec<Conn> = Vec::with_capacity(specs.len());
    for spec in &specs {
        if stop.load(Ordering::Acquire) {
            return Ok(());
        }
        let (stream, leftover) =
            handshake(spec).with_context(|| format!("{:?} {}", spec.protocol, spec.target))?;
        stream.set_nonblocking(true)?;
        let mut stream = mio::net::TcpStream::from_std(stream);
        poll.registry()
            .register(&mut stream, Token(conns.len()), Interest::READABLE)?;
        let mut conn = Conn::new(stream, spec.protocol);
        conn.on_bytes(&leftover, Stamp::now(), &mut *sink.lock().unwrap(), status);
        conns.push(conn);
        status.connected.fetch_add(1, Ordering::Release);
    }
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut control = nix::cmsg_space!([nix::sys::time::TimeSpec; 3]);
    while !stop.load(Ordering::Acquire) {
        match poll.poll(&mut events, Some(Duration::from_millis(100))) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err.into()),
        }
        if events.is_empty() {
            continue;
        }
        let mut sink = sink.lock().unwrap();
        for event in &events {
            conns[event.token().0].read_ready(&mut buf, &mut control, &mut *sink, status);
        }
    }
    Ok(())
}

/// Connects (from `spec.source` if set) and does the protocol's handshake, blocking. Returns
/// the stream and whatever arrived after the handshake.
fn handshake(spec: &Spec) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    if let Some(ip) = spec.source {
        socket.bind(&SockAddr::from(SocketAddr::new(ip, 0)))?;
    }
    socket.connect_timeout(&SockAddr::from(spec.addr), Duration::from_secs(10))?;
    let mut stream: TcpStream = socket.into();
    stream.set_nodelay(true)?;
    let stamps = TimestampingFlag::SOF_TIMESTAMPING_SOFTWARE
        | TimestampingFlag::SOF_TIMESTAMPING_RX_SOFTWARE;
    sock::setsockopt(&stream, sockopt::Timestamping, &stamps)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let host = spec.addr;
    let request = match spec.protocol {
        Protocol::GatewayWs => upgrade_request(&spec.target, host),
        Protocol::NatsWs => upgrade_request("/", host),
        Protocol::Sse => format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n",
            spec.target
        ),
    };
    stream.write_all(request.as_bytes())?;
    let mut data = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(at) = find(&data, b"\r\n\r\n") {
            break at + 4;
        }
        read_some(&mut stream, &mut data)?;
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_ascii_lowercase();
    let expected = match spec.protocol {
        Protocol::Sse => "http/1.1 200",
        Protocol::GatewayWs | Protocol::NatsWs => "http/1.1 101",
    };
    if !head.starts_with(expected) {
        bail!("handshake answered {:?}", head.lines().next().unwrap_or(""));
    }
    if spec.protocol == Protocol::Sse && !head.contains("transfer-encoding: chunked") {
        bail!("SSE response is not chunked");
    }
    let mut leftover = data.split_off(head_end);
    if spec.protocol == Protocol::NatsWs {
        let subscribe = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"echo\":false}}\r\nSUB {} 1\r\nPING\r\n",
            spec.target
        );
        stream.write_all(&client_frame(0x1, subscribe.as_bytes()))?;
        // Everything up to the PONG (INFO, maybe +OK) is dropped; what follows is kept.
        let mut text = Vec::new();
        loop {
            let used = ws_frames(&leftover, |opcode, payload| {
                if matches!(opcode, 0x0..=0x2) {
                    text.extend_from_slice(payload);
                }
            })?;
            leftover.drain(..used);
            if let Some(at) = find(&text, b"PONG\r\n") {
                let rest = text.split_off(at + 6);
                let mut framed = server_frame(&rest);
                framed.extend_from_slice(&leftover);
                return Ok((stream, framed));
            }
            read_some(&mut stream, &mut leftover)?;
        }
    }
    Ok((stream, leftover))
}

fn upgrade_request(path: &str, host: SocketAddr) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

fn read_some(stream: &mut TcpStream, into: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk)?;
    if n == 0 {
        bail!("connection closed during the handshake");
    }
    into.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// One connection's parsing state.
struct Conn {
    stream: Option<mio::net::TcpStream>,
    protocol: Protocol,
    /// Received bytes not yet parsed: a WebSocket frame or an HTTP chunk split across reads.
    partial: Vec<u8>,
    /// The application stream not yet parsed: NATS protocol (a `MSG` split across frames) or
    /// de-chunked SSE text up to the next blank line.
    app: Vec<u8>,
    /// SSE: bytes left in the current HTTP chunk, including its trailing CRLF.
    chunk_left: usize,
    /// Frames to send back (pongs).
    out: Vec<u8>,
}

impl Conn {
    fn new(stream: mio::net::TcpStream, protocol: Protocol) -> Conn {
        Conn {
            stream: Some(stream),
            protocol,
            partial: Vec::new(),
            app: Vec::new(),
            chunk_left: 0,
            out: Vec::new(),
        }
    }

    fn read_ready(
        &mut self,
        buf: &mut [u8],
        control: &mut Vec<u8>,
        sink: &mut dyn Sink,
        status: &Status,
    ) {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                return;
            };
            match read_stamped(stream, buf, control) {
                Ok((0, _)) => return self.close(status),
                Ok((n, at)) => {
                    self.on_bytes(&buf[..n], at, sink, status);
                    // A short read drained the socket; new data raises a new edge.
                    if n < buf.len() {
                        return;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(status),
            }
        }
    }

    fn close(&mut self, status: &Status) {
        if self.stream.take().is_some() {
            status.closed.fetch_add(1, Ordering::Release);
        }
    }

    fn on_bytes(&mut self, data: &[u8], at: Stamp, sink: &mut dyn Sink, status: &Status) {
        if data.is_empty() {
            return;
        }
        let ok = if self.partial.is_empty() {
            let used = self.parse(data, at, sink);
            if let Ok(used) = used {
                self.partial.extend_from_slice(&data[used..]);
            }
            used.is_ok()
        } else {
            let mut joined = std::mem::take(&mut self.partial);
            joined.extend_from_slice(data);
            let used = self.parse(&joined, at, sink);
            if let Ok(used) = used {
                joined.drain(..used);
                self.partial = joined;
            }
            used.is_ok()
        };
        if !self.out.is_empty() {
            if let Some(stream) = self.stream.as_mut() {
                // Pongs are a few bytes: a full socket buffer here means the peer is gone.
                let _ = stream.write_all(&self.out);
            }
            self.out.clear();
        }
        if !ok {
            self.close(status);
        }
    }

    /// Parses what `data` holds; returns how much was used, or an error that ends the
    /// connection (a close frame, the end of the SSE stream, garbage).
    fn parse(&mut self, data: &[u8], at: Stamp, sink: &mut dyn Sink) -> anyhow::Result<usize> {
        match self.protocol {
            Protocol::GatewayWs => {
                let mut end = false;
                let out = &mut self.out;
                let used = ws_frames(data, |opcode, payload| match opcode {
                    0x1 => {
                        if let Some(id) = json_round_id(payload) {
                            sink.delivered(Protocol::GatewayWs, id, at);
                        }
                    }
                    0x9 => out.extend_from_slice(&client_frame(0xA, payload)),
                    0x8 => end = true,
                    _ => {}
                })?;
                if end {
                    bail!("closed by the server");
                }
                Ok(used)
            }
            Protocol::NatsWs => {
                let mut text = std::mem::take(&mut self.app);
                let mut end = false;
                let out = &mut self.out;
                let used = ws_frames(data, |opcode, payload| match opcode {
                    0x0..=0x2 => text.extend_from_slice(payload),
                    0x9 => out.extend_from_slice(&client_frame(0xA, payload)),
                    0x8 => end = true,
                    _ => {}
                })?;
                let parsed = nats_messages(&text, at, sink, &mut self.out)?;
                text.drain(..parsed);
                self.app = text;
                if end {
                    bail!("closed by the server");
                }
                Ok(used)
            }
            Protocol::Sse => {
                let used = self.dechunk(data)?;
                let mut consumed = 0;
                while let Some(at_blank) = find(&self.app[consumed..], b"\n\n") {
                    let block = &self.app[consumed..consumed + at_blank];
                    if let Some(id) = json_round_id(block) {
                        sink.delivered(Protocol::Sse, id, at);
                    }
                    consumed += at_blank + 2;
                }
                self.app.drain(..consumed);
                Ok(used)
            }
        }
    }

    /// Moves the chunk payloads of `data` into `app`; returns how much of `data` was used.
    fn dechunk(&mut self, data: &[u8]) -> anyhow::Result<usize> {
        let mut pos = 0;
        while pos < data.len() {
            if self.chunk_left == 0 {
                let Some(line) = find(&data[pos..], b"\r\n") else {
                    break;
                };
                let size = std::str::from_utf8(&data[pos..pos + line])?;
                let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
                if size == 0 {
                    bail!("the SSE stream ended");
                }
                pos += line + 2;
                self.chunk_left = size + 2;
                continue;
            }
            let take = self.chunk_left.min(data.len() - pos);
            // The last two bytes of a chunk are its CRLF, not payload.
            let payload = take.min(self.chunk_left.saturating_sub(2));
            self.app.extend_from_slice(&data[pos..pos + payload]);
            self.chunk_left -= take;
            pos += take;
        }
        Ok(pos)
    }
}

/// Reads what `stream` holds into `buf`, with the kernel's receive timestamp of the last segment
/// read (`SO_TIMESTAMPING` is set on every client socket).
fn read_stamped(
    stream: &mio::net::TcpStream,
    buf: &mut [u8],
    control: &mut Vec<u8>,
) -> io::Result<(usize, Stamp)> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = sock::recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(control),
        MsgFlags::empty(),
    )?;
    let read = Instant::now();
    let received = msg.cmsgs()?.find_map(|cmsg| match cmsg {
        ControlMessageOwned::ScmTimestampsns(stamps) => Some(
            UNIX_EPOCH
                + Duration::new(
                    u64::try_from(stamps.system.tv_sec()).unwrap_or(0),
                    u32::try_from(stamps.system.tv_nsec()).unwrap_or(0),
                ),
        ),
        _ => None,
    });
    let received = received.unwrap_or_else(SystemTime::now);
    Ok((msg.bytes, Stamp { read, received }))
}

/// Calls `frame(opcode, payload)` for every complete (unmasked, server) frame in `data`;
/// returns the bytes used.
fn ws_frames(data: &[u8], mut frame: impl FnMut(u8, &[u8])) -> anyhow::Result<usize> {
    let mut pos = 0;
    loop {
        let rest = &data[pos..];
        if rest.len() < 2 {
            return Ok(pos);
        }
        if rest[1] & 0x80 != 0 {
            bail!("masked frame from a server");
        }
        let (header, len) = match rest[1] & 0x7F {
            126 if rest.len() >= 4 => (4, usize::from(u16::from_be_bytes([rest[2], rest[3]]))),
            127 if rest.len() >= 10 => {
                let mut len = [0u8; 8];
                len.copy_from_slice(&rest[2..10]);
                (10, usize::try_from(u64::from_be_bytes(len))?)
            }
            126 | 127 => return Ok(pos),
            len => (2, usize::from(len)),
        };
        if rest.len() < header + len {
            return Ok(pos);
        }
        frame(rest[0] & 0x0F, &rest[header..header + len]);
        pos += header + len;
    }
}

/// A client frame (FIN, masked with a zero key: the payload stays as it is).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len @ 126..=0xFFFF => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// A server-style binary frame around `payload` (to hand post-handshake bytes to the parser).
fn server_frame(payload: &[u8]) -> Vec<u8> {
    if payload.is_empty() {
        return Vec::new();
    }
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x82);
    match payload.len() {
        len @ 0..=125 => frame.push(len as u8),
        len @ 126..=0xFFFF => {
            frame.push(126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}

/// Handles the complete NATS protocol messages in `text`; returns the bytes used.
fn nats_messages(
    text: &[u8],
    at: Stamp,
    sink: &mut dyn Sink,
    out: &mut Vec<u8>,
) -> anyhow::Result<usize> {
    let mut pos = 0;
    while let Some(eol) = find(&text[pos..], b"\r\n") {
        let line = &text[pos..pos + eol];
        if line.starts_with(b"MSG ") {
            let size = line
                .rsplit(|&b| b == b' ')
                .next()
                .and_then(|s| std::str::from_utf8(s).ok())
                .and_then(|s| s.parse::<usize>().ok())
                .context("malformed MSG line")?;
            let start = pos + eol + 2;
            if text.len() < start + size + 2 {
                break;
            }
            if let Some(id) = msgpack_round_id(&text[start..start + size]) {
                sink.delivered(Protocol::NatsWs, id, at);
            }
            pos = start + size + 2;
            continue;
        }
        if line == b"PING" {
            out.extend_from_slice(&client_frame(0x1, b"PONG\r\n"));
        } else if line.starts_with(b"-ERR") {
            bail!("NATS error: {}", String::from_utf8_lossy(line));
        }
        pos += eol + 2;
    }
    Ok(pos)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// The number after `"round_id":` in a JSON round.
pub fn json_round_id(json: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"\"round_id\":";
    let at = find(json, KEY)? + KEY.len();
    let sign = usize::from(json.get(at) == Some(&b'-'));
    let digits = json[at + sign..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&json[at..at + sign + digits])
        .ok()?
        .parse()
        .ok()
}

/// The `round_id` of a MessagePack round (a map with named fields), without decoding it all.
pub fn msgpack_round_id(payload: &[u8]) -> Option<i64> {
    // fixstr of length 8, then the key.
    const KEY: &[u8] = b"\xa8round_id";
    let at = find(payload, KEY)? + KEY.len();
    let rest = payload.get(at..)?;
    let be = |n: usize| -> Option<u64> {
        let bytes = rest.get(1..1 + n)?;
        Some(bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    };
    let tag = *rest.first()?;
    match tag {
        0x00..=0x7F => Some(i64::from(tag)),
        0xE0..=0xFF => Some(i64::from(tag as i8)),
        0xCC => be(1).map(|v| v as i64),
        0xCD => be(2).map(|v| v as i64),
        0xCE => be(4).map(|v| v as i64),
        0xCF | 0xD3 => be(8).map(|v| v as i64),
        0xD0 => be(1).map(|v| i64::from(v as u8 as i8)),
        0xD1 => be(2).map(|v| i64::from(v as u16 as i16)),
        0xD2 => be(4).map(|v| i64::from(v as u32 as i32)),
        _ => None,
    }
}

/// A latency histogram in microseconds with about 1.5 % resolution (64 sub-buckets per power
/// of two), for millions of samples without keeping them.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; 64 * 64],
            total: 0,
            max: 0,
        }
    }
}

impl Histogram {
    pub fn record(&mut self, micros: u64) {
        self.counts[bucket(micros)] += 1;
        self.total += 1;
        self.max = self.max.max(micros);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The `q` quantile in milliseconds (the upper edge of its bucket), 0 when empty.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((self.total as f64 * q).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_high(i).min(self.max) as f64 / 1000.0;
            }
        }
        self.max as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.max as f64 / 1000.0
    }
}

/// Values below 128 have a bucket each; above, the top 7 significant bits pick the bucket.
fn bucket(v: u64) -> usize {
    if v < 128 {
        return v as usize;
    }
    let e = 63 - u64::from(v.leading_zeros());
    (((e - 6) * 64 + (v >> (e - 6))) as usize).min(64 * 64 - 1)
}

fn bucket_high(i: usize) -> u64 {
    if i < 128 {
        return i as u64;
    }
    let (group, m) = ((i / 64) as u64, (i % 64) as u64 + 64);
    let shift = group - 1;
    ((m + 1) << shift) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_contiguous() {
        for v in [0u64, 1, 127, 128, 129, 255, 256, 1000, 50_000, 1 << 40] {
            let i = bucket(v);
            assert!(bucket_high(i) >= v, "{v}");
            if i > 0 {
                assert!(bucket_high(i - 1) < v, "{v}");
            }
        }
        let mut h = Histogram::default();
        for v in 1..=1000 {
            h.record(v * 10);
        }
        assert!((h.quantile_ms(0.5) - 5.0).abs() < 0.1);
        assert!((h.quantile_ms(0.99) - 9.9).abs() < 0.2);
    }

    #[test]
    fn round_ids_without_parsing() {
        assert_eq!(json_round_id(br#"{"round_id":512,"game_id":1}"#), Some(512));
        assert_eq!(json_round_id(br#"{"round_id":-3,"game_id":1}"#), Some(-3));
        let round = shared::Round {
            round_id: 70_000,
            game_id: 1,
            game_slug: "crash".into(),
            game_type: "multiplier".into(),
            finished_at: String::new(),
            extras: "{}".into(),
            timestamp: 0,
            seq: 0,
        };
        for id in [70_000, 5, -3, -300, -70_000, i64::MAX] {
            let round = shared::Round {
                round_id: id,
                ..round.clone()
            };
            assert_eq!(msgpack_round_id(&round.to_msgpack().unwrap()), Some(id));
        }
    }

    struct Ids(Vec<i64>);
    impl Sink for Ids {
        fn delivered(&mut self, _: Protocol, round_id: i64, _: Stamp) {
            self.0.push(round_id);
        }
    }

    #[test]
    fn sse_chunks_split_anywhere() {
        let body = b"c\r\nretry: 2000\n\n\r\n1f\r\ndata: {\"round_id\":7,\"x\":1}\n\n\r\n";
        for split in 1..body.len() {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let mut conn = Conn::new(mio::net::TcpStream::from_std(stream), Protocol::Sse);
            let (mut ids, status) = (Ids(Vec::new()), Status::default());
            conn.on_bytes(&body[..split], Stamp::now(), &mut ids, &status);
            conn.on_bytes(&body[split..], Stamp::now(), &mut ids, &status);
            assert_eq!(ids.0, [7], "split at {split}");
        }
    }
}

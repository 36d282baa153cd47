//! The replication connection: a `replication=database` session over tokio, speaking the wire
//! protocol through postgres-protocol.
//!
//! tokio-postgres cannot carry a replication stream (it has no CopyBoth mode), and we pin no fork
//! of it, so this module opens its own socket: startup and authentication (trust, cleartext, MD5,
//! SCRAM-SHA-256), `IDENTIFY_SYSTEM` over the simple query protocol, then `START_REPLICATION`,
//! after which the connection becomes a [`ReplicationStream`]. Connection settings come from a
//! [`tokio_postgres::Config`], so one `DATABASE_URL` serves both connections.
//!
//! Frames are split with [`protocol::next_frame`]; CopyBothResponse (`W`), CopyData (`d`) and
//! CopyDone (`c`) are handled here because `backend::Message::parse` does not know `W`, and every
//! other frame goes to `Message::parse`.
//!
//! TLS is not supported in this iteration: `sslmode=require` (and `channel_binding=require`,
//! which needs TLS) fail at once with a clear error; `prefer` and `disable` connect in plain
//! text. Keep the consumer on a trusted network or a Unix socket until TLS lands.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::backend::{self, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres::config::{ChannelBinding, Host, SslMode};
use tokio_postgres::fallible_iterator::FallibleIterator;
use tracing::{debug, info, warn};

use super::protocol::{self, ProtocolError, ReplicationMessage};
use super::time::PgTimestamp;
use super::Lsn;

/// Spare room made in the read buffer before each read. Frames are split off the same
/// allocation until it runs out, so there is no allocation per message.
const READ_CHUNK: usize = 64 * 1024;
/// How long [`ReplicationStream::close`] waits for the server to hang up.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// PostgreSQL's default port, as libpq assumes it.
const DEFAULT_PORT: u16 = 5432;
/// SQLSTATE object_in_use: the slot is active for another process.
const SLOT_IN_USE: &str = "55006";

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error(
        "sslmode=require is not supported by the replication connection yet (no TLS); \
         use sslmode=prefer or sslmode=disable on a trusted network or a Unix socket"
    )]
    TlsRequired,
    #[error("invalid replication connection settings: {0}")]
    Config(String),
    #[error("connecting to PostgreSQL at {target}: {source}")]
    Connect { target: String, source: io::Error },
    /// Rejected credentials (`code` is the server's SQLSTATE, class 28) or an authentication
    /// exchange we cannot complete (`code` is `None`).
    #[error("authentication failed: {message}{}", sqlstate_suffix(code))]
    Auth {
        code: Option<String>,
        message: String,
    },
    /// Another process streams from the slot: a standby waits and tries again.
    #[error("replication slot in use: {message}")]
    SlotInUse { message: String },
    #[error("PostgreSQL error {code}: {message}")]
    Server { code: String, message: String },
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("unexpected message {tag:?} from PostgreSQL during {during}")]
    Unexpected { tag: char, during: &'static str },
    #[error("malformed {what} from PostgreSQL: {reason}")]
    BadReply { what: &'static str, reason: String },
    /// CopyDone or CommandComplete: the server finished the stream (e.g. it is shutting down).
    #[error("the server ended the replication stream")]
    StreamEnded,
    #[error("the server closed the replication connection")]
    Closed,
    #[error("I/O error on the replication connection: {0}")]
    Io(#[from] io::Error),
}

fn sqlstate_suffix(code: &Option<String>) -> String {
    code.as_ref()
        .map(|code| format!(" (SQLSTATE {code})"))
        .unwrap_or_default()
}

impl ReplicationError {
    /// The slot is held by another connection: the standby's signal to wait, not to fail.
    pub fn is_slot_in_use(&self) -> bool {
        matches!(self, ReplicationError::SlotInUse { .. })
    }
}

/// The answer to `IDENTIFY_SYSTEM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's unique system identifier (a u64, in decimal, as PostgreSQL prints it).
    pub system_id: String,
    pub timeline: i32,
    /// Current WAL flush position.
    pub xlogpos: Lsn,
    /// The database this session is connected to.
    pub dbname: Option<String>,
}

/// A replication session before streaming: identify the server, then start replication.
pub struct ReplicationClient {
    wire: Wire,
    backend_pid: Option<i32>,
}

impl ReplicationClient {
    /// Connects with `replication=database` to the first host of `config` that accepts us.
    pub async fn connect(
        config: &tokio_postgres::Config,
    ) -> Result<ReplicationClient, ReplicationError> {
        check_supported(config)?;
        let user = config
            .get_user()
            .ok_or_else(|| ReplicationError::Config("no user given".to_owned()))?;
        let mut last_error = None;
        for target in targets(config)? {
            match connect_to(&target, config, user).await {
                // Debug level: a standby polling for the slot connects several times a second,
                // and the caller logs the error it gets back.
                Ok(client) => {
                    debug!(%target, backend_pid = ?client.backend_pid, "replication connection up");
                    return Ok(client);
                }
                Err(error) => {
                    debug!(%target, %error, "replication connection attempt failed");
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| ReplicationError::Config("no host given".to_owned())))
    }

    /// The server process serving this session (`active_pid` of the slot once streaming).
    pub fn backend_pid(&self) -> Option<i32> {
        self.backend_pid
    }

    /// `IDENTIFY_SYSTEM`: which cluster, timeline and database this is, and its WAL position.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity, ReplicationError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let bad = |reason: String| ReplicationError::BadReply {
            what: "IDENTIFY_SYSTEM reply",
            reason,
        };
        let [row] = rows.as_slice() else {
            return Err(bad(format!("{} rows, expected 1", rows.len())));
        };
        let [system_id, timeline, xlogpos, dbname, ..] = row.as_slice() else {
            return Err(bad(format!("{} columns, expected 4", row.len())));
        };
        let (Some(system_id), Some(timeline), Some(xlogpos)) = (system_id, timeline, xlogpos)
        else {
            return Err(bad("a NULL systemid, timeline or xlogpos".to_owned()));
        };
        Ok(SystemIdentity {
            system_id: system_id.clone(),
            timeline: timeline
                .parse()
                .map_err(|_| bad(format!("timeline {timeline:?}")))?,
            xlogpos: xlogpos.parse().map_err(|e| bad(format!("xlogpos: {e}")))?,
            dbname: dbname.clone(),
        })
    }

    /// Starts streaming `slot` through pgoutput (protocol 1, with `messages`), from `start` or,
    /// when `start` is before it (e.g. [`Lsn::ZERO`]), from the slot's `confirmed_flush_lsn`.
    pub async fn start_logical_replication(
        mut self,
        slot: &str,
        start: Lsn,
        publication: &str,
    ) -> Result<ReplicationStream, ReplicationError> {
        let command = protocol::start_replication_command(slot, start, publication);
        frontend::query(&command, &mut self.wire.write_buf)
            .map_err(|e| ReplicationError::Config(format!("slot or publication name: {e}")))?;
        self.wire.flush().await?;
        loop {
            let (tag, body) = self.wire.read_frame().await?;
            if tag == b'W' {
                info!(slot, %start, publication, "logical replication started");
                return Ok(ReplicationStream {
                    wire: self.wire,
                    backend_pid: self.backend_pid,
                });
            }
            match parse_backend(tag, body)? {
                Message::ErrorResponse(body) => {
                    let error = ServerMessage::parse(body.fields())?;
                    return Err(if error.code == SLOT_IN_USE {
                        ReplicationError::SlotInUse {
                            message: error.message,
                        }
                    } else {
                        error.into_error()
                    });
                }
                Message::NoticeResponse(body) => ServerMessage::parse(body.fields())?.log(),
                Message::ParameterStatus(_) => {}
                _ => {
                    return Err(ReplicationError::Unexpected {
                        tag: tag.into(),
                        during: "START_REPLICATION",
                    })
                }
            }
        }
    }

    /// Runs one command with the simple query protocol; its rows as text (`None` for NULL).
    async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ReplicationError> {
        frontend::query(sql, &mut self.wire.write_buf)
            .map_err(|e| ReplicationError::Config(format!("query text: {e}")))?;
        self.wire.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        // Read up to ReadyForQuery even after an error, so the session stays usable.
        loop {
            let (tag, body) = self.wire.read_frame().await?;
            match parse_backend(tag, body)? {
                Message::DataRow(row) => rows.push(text_row(&row)?),
                Message::RowDescription(_)
                | Message::CommandComplete(_)
                | Message::EmptyQueryResponse
                | Message::ParameterStatus(_) => {}
                Message::ErrorResponse(body) => {
                    error = Some(ServerMessage::parse(body.fields())?.into_error());
                }
                Message::NoticeResponse(body) => ServerMessage::parse(body.fields())?.log(),
                Message::ReadyForQuery(_) => return error.map_or(Ok(rows), Err),
                _ => {
                    return Err(ReplicationError::Unexpected {
                        tag: tag.into(),
                        during: "a simple query",
                    })
                }
            }
        }
    }
}

/// A running replication stream (CopyBoth mode).
pub struct ReplicationStream {
    wire: Wire,
    backend_pid: Option<i32>,
}

impl ReplicationStream {
    /// The next XLogData or keepalive.
    ///
    /// Cancel-safe: dropped before it completes (as a losing `tokio::select!` branch), it loses
    /// nothing; bytes already read stay buffered for the next call.
    pub async fn next(&mut self) -> Result<ReplicationMessage, ReplicationError> {
        Ok(protocol::parse_copy_data(self.next_copy_data().await?)?)
    }

    /// The next CopyData body, unparsed: what [`ReplicationStream::next`] parses, for capturing
    /// raw protocol bytes. Cancel-safe like `next`.
    pub async fn next_copy_data(&mut self) -> Result<Bytes, ReplicationError> {
        loop {
            let (tag, body) = self.wire.read_frame().await?;
            match tag {
                b'd' => return Ok(body),
                b'c' => return Err(ReplicationError::StreamEnded),
                _ => match parse_backend(tag, body)? {
                    // A walsender shutting down ends the COPY with CommandComplete alone.
                    Message::CommandComplete(_) => return Err(ReplicationError::StreamEnded),
                    Message::ErrorResponse(body) => {
                        return Err(ServerMessage::parse(body.fields())?.into_error())
                    }
                    Message::NoticeResponse(body) => ServerMessage::parse(body.fields())?.log(),
                    Message::ParameterStatus(_) => {}
                    _ => {
                        return Err(ReplicationError::Unexpected {
                            tag: tag.into(),
                            during: "the replication stream",
                        })
                    }
                },
            }
        }
    }

    /// Sends a standby status update: everything up to `write` received, up to `flush` durably
    /// handled (PostgreSQL's `confirmed_flush_lsn`; apply is reported equal to it).
    ///
    /// The unsent part of an interrupted update stays buffered and goes out first next time, so
    /// cancelling this never corrupts the stream.
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        reply_requested: bool,
    ) -> Result<(), ReplicationError> {
        protocol::encode_status_update(
            write,
            flush,
            flush,
            PgTimestamp::now(),
            reply_requested,
            &mut self.wire.write_buf,
        );
        self.wire.flush().await?;
        debug!(%write, %flush, reply_requested, "standby status sent");
        Ok(())
    }

    /// The server process streaming to us (`active_pid` of the slot).
    pub fn backend_pid(&self) -> Option<i32> {
        self.backend_pid
    }

    /// Ends the stream (CopyDone, Terminate) and waits, up to a few seconds, for the server to
    /// hang up: by then its walsender has exited and released the slot, so a standby can take
    /// it over at once. Best effort; failures are only logged.
    pub async fn close(mut self) {
        frontend::copy_done(&mut self.wire.write_buf);
        frontend::terminate(&mut self.wire.write_buf);
        let outcome = tokio::time::timeout(CLOSE_TIMEOUT, async {
            self.wire.flush().await?;
            self.wire.discard_until_eof().await
        })
        .await;
        match outcome {
            Ok(Ok(())) => debug!(backend_pid = ?self.backend_pid, "replication stream closed"),
            Ok(Err(error)) => debug!(%error, "replication stream closed uncleanly"),
            Err(_) => warn!(timeout = ?CLOSE_TIMEOUT, "server did not hang up after Terminate"),
        }
    }
}

/// An async byte stream to the server: TCP or a Unix socket.
trait Transport: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Transport for T {}

/// The socket with its read and write buffers; both outlive any one call, which is what makes
/// reads and writes safe to cancel.
struct Wire {
    socket: Box<dyn Transport>,
    read_buf: BytesMut,
    write_buf: BytesMut,
}

impl Wire {
    fn new(socket: Box<dyn Transport>) -> Wire {
        Wire {
            socket,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::new(),
        }
    }

    /// The next whole backend message. Cancel-safe: `read_buf` is, and framing is synchronous.
    async fn read_frame(&mut self) -> Result<(u8, Bytes), ReplicationError> {
        loop {
            if let Some(frame) = protocol::next_frame(&mut self.read_buf)? {
                return Ok(frame);
            }
            self.read_buf.reserve(READ_CHUNK);
            if self.socket.read_buf(&mut self.read_buf).await? == 0 {
                return Err(ReplicationError::Closed);
            }
        }
    }

    /// Writes out everything buffered. `write_all_buf` advances the buffer as it goes, so a
    /// cancelled flush resumes where it stopped.
    async fn flush(&mut self) -> Result<(), ReplicationError> {
        self.socket.write_all_buf(&mut self.write_buf).await?;
        self.socket.flush().await?;
        Ok(())
    }

    async fn discard_until_eof(&mut self) -> Result<(), ReplicationError> {
        loop {
            self.read_buf.clear();
            self.read_buf.reserve(READ_CHUNK);
            if self.socket.read_buf(&mut self.read_buf).await? == 0 {
                return Ok(());
            }
        }
    }
}

/// Refuses settings this connection cannot honour, before touching the network.
fn check_supported(config: &tokio_postgres::Config) -> Result<(), ReplicationError> {
    match config.get_ssl_mode() {
        SslMode::Disable | SslMode::Prefer => {}
        _ => return Err(ReplicationError::TlsRequired),
    }
    if config.get_channel_binding() == ChannelBinding::Require {
        return Err(ReplicationError::Config(
            "channel_binding=require needs TLS, which the replication connection does not \
             support yet"
                .to_owned(),
        ));
    }
    Ok(())
}

/// One address to try.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Tcp(String, u16),
    /// The directory holding the server's socket, `.s.PGSQL.<port>`.
    Unix(PathBuf, u16),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp(host, port) => write!(f, "{host}:{port}"),
            Target::Unix(dir, port) => write!(f, "{}/.s.PGSQL.{port}", dir.display()),
        }
    }
}

/// The hosts to try, in order, paired with their ports as libpq does: one port for all hosts or
/// one per host; a `hostaddr` is used instead of its `host`.
fn targets(config: &tokio_postgres::Config) -> Result<Vec<Target>, ReplicationError> {
    let hosts = config.get_hosts();
    let addrs = config.get_hostaddrs();
    let ports = config.get_ports();
    if !hosts.is_empty() && !addrs.is_empty() && hosts.len() != addrs.len() {
        return Err(ReplicationError::Config(format!(
            "{} hosts but {} hostaddrs",
            hosts.len(),
            addrs.len()
        )));
    }
    let count = hosts.len().max(addrs.len());
    if count == 0 {
        return Err(ReplicationError::Config("no host given".to_owned()));
    }
    if ports.len() > 1 && ports.len() != count {
        return Err(ReplicationError::Config(format!(
            "{count} hosts but {} ports",
            ports.len()
        )));
    }
    Ok((0..count)
        .filter_map(|i| {
            let port = ports
                .get(i)
                .or_else(|| ports.first())
                .copied()
                .unwrap_or(DEFAULT_PORT);
            match (addrs.get(i), hosts.get(i)) {
                (Some(addr), _) => Some(Target::Tcp(addr.to_string(), port)),
                (None, Some(Host::Tcp(host))) => Some(Target::Tcp(host.clone(), port)),
                (None, Some(Host::Unix(dir))) => Some(Target::Unix(dir.clone(), port)),
                (None, None) => None,
            }
        })
        .collect())
}

async fn open_socket(
    target: &Target,
    timeout: Option<Duration>,
) -> Result<Box<dyn Transport>, ReplicationError> {
    let connect = async {
        let socket: Box<dyn Transport> = match target {
            Target::Tcp(host, port) => {
                let socket = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                // Status updates are tiny and latency matters more than packet count.
                socket.set_nodelay(true)?;
                Box::new(socket)
            }
            Target::Unix(dir, port) => Box::new(
                tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{port}"))).await?,
            ),
        };
        Ok::<_, io::Error>(socket)
    };
    let result = match timeout {
        Some(limit) => tokio::time::timeout(limit, connect)
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))),
        None => connect.await,
    };
    result.map_err(|source| ReplicationError::Connect {
        target: target.to_string(),
        source,
    })
}

/// Opens the socket, sends the startup message, authenticates and waits for ReadyForQuery.
async fn connect_to(
    target: &Target,
    config: &tokio_postgres::Config,
    user: &str,
) -> Result<ReplicationClient, ReplicationError> {
    let mut wire = Wire::new(open_socket(target, config.get_connect_timeout().copied()).await?);
    let mut params = vec![
        ("user", user),
        ("replication", "database"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO"),
    ];
    if let Some(dbname) = config.get_dbname() {
        params.push(("database", dbname));
    }
    if let Some(application_name) = config.get_application_name() {
        params.push(("application_name", application_name));
    }
    if let Some(options) = config.get_options() {
        params.push(("options", options));
    }
    frontend::startup_message(params, &mut wire.write_buf)
        .map_err(|e| ReplicationError::Config(format!("startup parameters: {e}")))?;
    wire.flush().await?;
    authenticate(&mut wire, user, config.get_password()).await?;

    let mut backend_pid = None;
    loop {
        let (tag, body) = wire.read_frame().await?;
        match parse_backend(tag, body)? {
            Message::BackendKeyData(key) => backend_pid = Some(key.process_id()),
            Message::ParameterStatus(param) if param.name().ok() == Some("server_version") => {
                debug!(
                    server_version = param.value().unwrap_or("?"),
                    "PostgreSQL version"
                );
            }
            Message::ParameterStatus(_) => {}
            Message::NoticeResponse(body) => ServerMessage::parse(body.fields())?.log(),
            Message::ErrorResponse(body) => {
                return Err(ServerMessage::parse(body.fields())?.into_startup_error())
            }
            Message::ReadyForQuery(_) => return Ok(ReplicationClient { wire, backend_pid }),
            _ => {
                return Err(ReplicationError::Unexpected {
                    tag: tag.into(),
                    during: "startup",
                })
            }
        }
    }
}

/// Answers whatever authentication the server asks for, up to AuthenticationOk.
async fn authenticate(
    wire: &mut Wire,
    user: &str,
    password: Option<&[u8]>,
) -> Result<(), ReplicationError> {
    let need_password = || {
        password.ok_or_else(|| ReplicationError::Auth {
            code: None,
            message: "the server asks for a password and none is configured".to_owned(),
        })
    };
    let (tag, body) = wire.read_frame().await?;
    match parse_backend(tag, body)? {
        Message::AuthenticationOk => return Ok(()),
        Message::AuthenticationCleartextPassword => {
            frontend::password_message(need_password()?, &mut wire.write_buf)
                .map_err(|e| ReplicationError::Config(format!("password: {e}")))?;
        }
        Message::AuthenticationMd5Password(body) => {
            let hash = md5_hash(user.as_bytes(), need_password()?, body.salt());
            frontend::password_message(hash.as_bytes(), &mut wire.write_buf)
                .map_err(|e| ReplicationError::Config(format!("password: {e}")))?;
        }
        Message::AuthenticationSasl(body) => {
            let mut mechanisms = body.mechanisms();
            let mut has_scram = false;
            while let Some(mechanism) =
                mechanisms.next().map_err(|e| ReplicationError::BadReply {
                    what: "SASL mechanism list",
                    reason: e.to_string(),
                })?
            {
                has_scram |= mechanism == sasl::SCRAM_SHA_256;
            }
            if !has_scram {
                return Err(ReplicationError::Auth {
                    code: None,
                    message: "the server offers no SASL mechanism we support (SCRAM-SHA-256)"
                        .to_owned(),
                });
            }
            return scram_sha_256(wire, need_password()?).await;
        }
        Message::ErrorResponse(body) => {
            return Err(ServerMessage::parse(body.fields())?.into_startup_error())
        }
        Message::AuthenticationKerberosV5
        | Message::AuthenticationScmCredential
        | Message::AuthenticationGss
        | Message::AuthenticationSspi => {
            return Err(ReplicationError::Auth {
                code: None,
                message: "the server asks for an authentication method we do not support"
                    .to_owned(),
            })
        }
        _ => {
            return Err(ReplicationError::Unexpected {
                tag: tag.into(),
                during: "authentication",
            })
        }
    }
    wire.flush().await?;
    expect_auth_ok(wire).await
}

/// The SCRAM-SHA-256 exchange, without channel binding (there is no TLS to bind to). The
/// server's final signature is verified, so a server that does not know the password cannot
/// pretend to.
async fn scram_sha_256(wire: &mut Wire, password: &[u8]) -> Result<(), ReplicationError> {
    let scram_failed = |e: io::Error| ReplicationError::Auth {
        code: None,
        message: format!("SCRAM exchange: {e}"),
    };
    let mut scram = sasl::ScramSha256::new(password, sasl::ChannelBinding::unsupported());
    frontend::sasl_initial_response(sasl::SCRAM_SHA_256, scram.message(), &mut wire.write_buf)
        .map_err(scram_failed)?;
    wire.flush().await?;

    let server_first = scram_server_message(wire, false).await?;
    scram.update(&server_first).map_err(scram_failed)?;
    frontend::sasl_response(scram.message(), &mut wire.write_buf).map_err(scram_failed)?;
    wire.flush().await?;

    let server_final = scram_server_message(wire, true).await?;
    scram.finish(&server_final).map_err(scram_failed)?;
    expect_auth_ok(wire).await
}

/// The data of the server's next SCRAM message: `AuthenticationSaslContinue`, or
/// `AuthenticationSaslFinal` when `last` is set.
async fn scram_server_message(wire: &mut Wire, last: bool) -> Result<Vec<u8>, ReplicationError> {
    let (tag, body) = wire.read_frame().await?;
    match (parse_backend(tag, body)?, last) {
        (Message::AuthenticationSaslContinue(body), false) => Ok(body.data().to_vec()),
        (Message::AuthenticationSaslFinal(body), true) => Ok(body.data().to_vec()),
        (Message::ErrorResponse(body), _) => {
            Err(ServerMessage::parse(body.fields())?.into_startup_error())
        }
        _ => Err(ReplicationError::Unexpected {
            tag: tag.into(),
            during: "SCRAM authentication",
        }),
    }
}

async fn expect_auth_ok(wire: &mut Wire) -> Result<(), ReplicationError> {
    let (tag, body) = wire.read_frame().await?;
    match parse_backend(tag, body)? {
        Message::AuthenticationOk => Ok(()),
        Message::ErrorResponse(body) => {
            Err(ServerMessage::parse(body.fields())?.into_startup_error())
        }
        _ => Err(ReplicationError::Unexpected {
            tag: tag.into(),
            during: "authentication",
        }),
    }
}

/// Parses a frame other than `W`/`d`/`c` with postgres-protocol, which wants the header back.
fn parse_backend(tag: u8, body: Bytes) -> Result<Message, ReplicationError> {
    let malformed = |reason: String| ProtocolError::Malformed {
        tag: tag.into(),
        reason,
    };
    // next_frame bounds the body by MAX_FRAME_LEN, so this always fits.
    let len = u32::try_from(body.len() + 4).map_err(|e| malformed(e.to_string()))?;
    let mut framed = BytesMut::with_capacity(body.len() + 5);
    framed.put_u8(tag);
    framed.put_u32(len);
    framed.extend_from_slice(&body);
    match Message::parse(&mut framed) {
        Ok(Some(message)) => Ok(message),
        Ok(None) => Err(malformed("incomplete".to_owned()).into()),
        Err(e) => Err(malformed(e.to_string()).into()),
    }
}

/// The fields of an ErrorResponse or NoticeResponse that we keep.
struct ServerMessage {
    /// Not localized (the `V` field), so `WARNING` can be matched.
    severity: String,
    code: String,
    message: String,
}

impl ServerMessage {
    fn parse(mut fields: backend::ErrorFields<'_>) -> Result<ServerMessage, ReplicationError> {
        let mut parsed = ServerMessage {
            severity: String::new(),
            code: String::new(),
            message: String::new(),
        };
        while let Some(field) = fields.next().map_err(|e| ReplicationError::BadReply {
            what: "error or notice",
            reason: e.to_string(),
        })? {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'V' => parsed.severity = value,
                b'S' if parsed.severity.is_empty() => parsed.severity = value,
                b'C' => parsed.code = value,
                b'M' => parsed.message = value,
                _ => {}
            }
        }
        Ok(parsed)
    }

    fn into_error(self) -> ReplicationError {
        ReplicationError::Server {
            code: self.code,
            message: self.message,
        }
    }

    /// Class 28 (invalid authorization) is an authentication failure; anything else at startup
    /// (an unknown database, too many connections) is an ordinary server error.
    fn into_startup_error(self) -> ReplicationError {
        if self.code.starts_with("28") {
            ReplicationError::Auth {
                code: Some(self.code),
                message: self.message,
            }
        } else {
            self.into_error()
        }
    }

    fn log(self) {
        let ServerMessage {
            severity,
            code,
            message,
        } = self;
        if severity == "WARNING" {
            warn!(%severity, %code, %message, "PostgreSQL notice");
        } else {
            info!(%severity, %code, %message, "PostgreSQL notice");
        }
    }
}

/// A DataRow's values as text (the simple query protocol sends text).
fn text_row(row: &backend::DataRowBody) -> Result<Vec<Option<String>>, ReplicationError> {
    let bad = |reason: String| ReplicationError::BadReply {
        what: "data row",
        reason,
    };
    let buffer = row.buffer();
    row.ranges()
        .map_err(|e| bad(e.to_string()))
        .map(|range| {
            range
                .map(|range| {
                    let raw = buffer
                        .get(range)
                        .ok_or_else(|| bad("value out of bounds".to_owned()))?;
                    String::from_utf8(raw.to_vec())
                        .map_err(|_| bad("value is not UTF-8".to_owned()))
                })
                .transpose()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> tokio_postgres::Config {
        url.parse().unwrap()
    }

    #[test]
    fn refuses_required_tls_before_connecting() {
        let error = check_supported(&config("postgres://u@h/db?sslmode=require")).unwrap_err();
        assert!(matches!(error, ReplicationError::TlsRequired), "{error}");
        assert!(error
            .to_string()
            .contains("sslmode=require is not supported"));
        assert!(check_supported(&config("postgres://u@h/db?sslmode=prefer")).is_ok());
        assert!(check_supported(&config("postgres://u@h/db?sslmode=disable")).is_ok());
        assert!(matches!(
            check_supported(&config("postgres://u@h/db?channel_binding=require")),
            Err(ReplicationError::Config(_))
        ));
    }

    #[test]
    fn pairs_hosts_with_ports_like_libpq() {
        assert_eq!(
            targets(&config("postgres://u@a:1,b:2/db")).unwrap(),
            vec![Target::Tcp("a".into(), 1), Target::Tcp("b".into(), 2)]
        );
        assert_eq!(
            targets(&config("host=a,b port=7 user=u")).unwrap(),
            vec![Target::Tcp("a".into(), 7), Target::Tcp("b".into(), 7)]
        );
        assert_eq!(
            targets(&config("host=/run/pg user=u")).unwrap(),
            vec![Target::Unix("/run/pg".into(), 5432)]
        );
        assert_eq!(
            targets(&config("host=db.example hostaddr=10.0.0.9 port=6 user=u")).unwrap(),
            vec![Target::Tcp("10.0.0.9".into(), 6)]
        );
        assert!(matches!(
            targets(&config("host=a,b,c port=1,2 user=u")),
            Err(ReplicationError::Config(_))
        ));
        assert!(matches!(
            targets(&config("user=u")),
            Err(ReplicationError::Config(_))
        ));
        assert_eq!(
            Target::Unix("/run/pg".into(), 5433).to_string(),
            "/run/pg/.s.PGSQL.5433"
        );
    }

    #[test]
    fn reframes_backend_messages_for_postgres_protocol() {
        let Message::ReadyForQuery(body) = parse_backend(b'Z', Bytes::from_static(b"I")).unwrap()
        else {
            panic!("not ReadyForQuery");
        };
        assert_eq!(body.status(), b'I');
        // 'W' is exactly what postgres-protocol cannot parse, hence the special case.
        assert!(matches!(
            parse_backend(b'W', Bytes::from_static(b"\0\0\0")),
            Err(ReplicationError::Protocol(ProtocolError::Malformed {
                tag: 'W',
                ..
            }))
        ));
    }

    #[test]
    fn keeps_sqlstate_and_message_of_errors() {
        let body = Bytes::from_static(
            b"SERROR\0VERROR\0C55006\0Mreplication slot \"s\" is active for PID 7\0\0",
        );
        let Message::ErrorResponse(body) = parse_backend(b'E', body).unwrap() else {
            panic!("not an ErrorResponse");
        };
        let message = ServerMessage::parse(body.fields()).unwrap();
        assert_eq!(message.severity, "ERROR");
        assert_eq!(message.code, "55006");
        assert_eq!(
            message.message,
            "replication slot \"s\" is active for PID 7"
        );
        let error = message.into_startup_error();
        assert!(
            matches!(&error, ReplicationError::Server { code, .. } if code == "55006"),
            "{error}"
        );
    }

    #[test]
    fn reads_text_rows() {
        let mut body = 2_u16.to_be_bytes().to_vec();
        body.extend_from_slice(&2_i32.to_be_bytes());
        body.extend_from_slice(b"ok");
        body.extend_from_slice(&(-1_i32).to_be_bytes());
        let Message::DataRow(row) = parse_backend(b'D', Bytes::from(body)).unwrap() else {
            panic!("not a DataRow");
        };
        assert_eq!(text_row(&row).unwrap(), vec![Some("ok".to_owned()), None]);
    }
}

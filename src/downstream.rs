//! Bounds on client connections: how many may be open (`limits.max_connections`) and how
//! long a request header may take to arrive (`limits.header_timeout`).
//!
//! Pingora 0.9 has neither. Its only header bound is a timeout per read (60 s, and none while
//! an idle keep-alive connection waits), so a client sending one byte every 59 s holds a
//! connection forever; `HttpServerOptions` caps requests per connection, not connections; the
//! `connection_filter` feature drops connections by address before any byte, with no count
//! and no answer. So the proxy's app is wrapped ([`Bounded`]): each connection is counted for
//! its lifetime (the count is held by its stream, [`Guarded`], and released when Pingora drops
//! it), one over the cap is answered `503` and closed, and the stream enforces the deadline:
//! from the connection's start, or from the first byte of each later request on it, to the
//! header's end (`ProxyHttp::early_request_filter`, see [`header_received`]); past it the
//! client gets `408` and the connection is closed. Both answers are JSON `{"error": ...}`.
//! An idle keep-alive connection waits under Pingora's own keep-alive timeout (60 s).

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use pingora_proxy::Session;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::client::{self, TrustedProxies};
use crate::metrics::Metrics;

/// The configured bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

/// How long a refused connection is read (and what it sent discarded) after its answer, so
/// the client reads the answer rather than a reset; and how much at most.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// A whole HTTP/1.1 answer with a JSON error, written straight to the socket (no session).
fn answer(status: &str, message: &str) -> Vec<u8> {
    let body = serde_json::json!({ "error": message }).to_string();
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The client listener's app: `A` (Pingora's HTTP proxy) behind the connection bounds.
pub struct Bounded<A> {
    inner: Arc<A>,
    limits: Limits,
    /// Peers whose connections may start with a PROXY protocol header (the plain listener;
    /// the TLS listener reads it before its handshake, see `client::ProxyHeaderBeforeTls`).
    trusted: TrustedProxies,
    open: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    busy: Vec<u8>,
}

impl<A> Bounded<A> {
    pub fn new(inner: A, limits: Limits, metrics: Arc<Metrics>) -> Bounded<A> {
        let busy = format!(
            "hf-edge has {} client connections open (limits.max_connections); try again",
            limits.max_connections
        );
        Bounded {
            inner: Arc::new(inner),
            limits,
            trusted: TrustedProxies::default(),
            open: Arc::new(AtomicUsize::new(0)),
            metrics,
            busy: answer("503 Service Unavailable", &busy),
        }
    }

    /// Accepts the PROXY protocol from `trusted` peers on the plain listener.
    pub fn trusting(self, trusted: TrustedProxies) -> Bounded<A> {
        Bounded { trusted, ..self }
    }

    /// Answers a connection over the cap and closes it.
    async fn refuse(&self, mut stream: Stream) {
        self.metrics.client_refused();
        let answered = tokio::time::timeout(LINGER, async {
            stream.write_all(&self.busy).await?;
            stream.flush().await?;
            AsyncWriteExt::shutdown(&mut stream).await
        })
        .await;
        if !matches!(answered, Ok(Ok(()))) {
            return;
        }
        let mut sink = vec![0; LINGER_BYTES];
        let _ = tokio::time::timeout(LINGER, async {
            let mut read = 0;
            while read < LINGER_BYTES {
                match stream.read(&mut sink[read..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => read += n,
                }
            }
        })
        .await;
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Bounded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // A stream handed back for reuse is already counted and guarded.
        if (*stream).as_any().is::<Guarded>() {
            return self.inner.process_new(stream, shutdown).await;
        }
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        if open > self.limits.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.refuse(stream).await;
            return None;
        }
        self.metrics.client_connections(open);
        let mut stream = stream;
        if !self.trusted.is_empty() && (*stream).as_any().is::<L4Stream>() {
            let mut plain = stream
                .into_any()
                .downcast::<L4Stream>()
                .expect("checked to be a plain stream");
            let accepted =
                client::accept_proxy_header(&mut plain, &self.trusted, self.limits.header_timeout)
                    .await;
            if let Err(e) = accepted {
                let open = self.open.fetch_sub(1, Ordering::AcqRel) - 1;
                self.metrics.client_connections(open);
                log::warn!("client connection dropped: {e}");
                return None;
            }
            stream = plain;
        }
        // HTTP/2 multiplexes requests on one connection: the header deadline, which reads
        // the connection as one request after another, does not apply (h2 has its own
        // flow control and Pingora's idle timeouts).
        let phase = match stream.selected_alpn_proto() {
            Some(ALPN::H2) => REQUEST,
            _ => HEADER,
        };
        let guarded = Guarded {
            inner: stream,
            phase: AtomicU8::new(phase),
            deadline: Box::pin(tokio::time::sleep(self.limits.header_timeout)),
            header_timeout: self.limits.header_timeout,
            open: self.open.clone(),
            metrics: self.metrics.clone(),
        };
        self.inner.process_new(Box::new(guarded), shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// Phases of a guarded connection.
const HEADER: u8 = 0;
const REQUEST: u8 = 1;
const IDLE: u8 = 2;
const TIMED_OUT: u8 = 3;

/// A client connection, counted while it lives, with a deadline on each request header.
pub struct Guarded {
    inner: Stream,
    /// [`HEADER`]: a request header is being read (the deadline runs); [`REQUEST`]: its
    /// header was read; [`IDLE`]: answered, until the next request's first byte;
    /// [`TIMED_OUT`]: answered `408`, every read fails.
    phase: AtomicU8,
    /// The current request header's deadline (reset for each request).
    deadline: Pin<Box<Sleep>>,
    header_timeout: Duration,
    open: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

/// `early_request_filter`: the request's header is read, its deadline stops.
pub fn header_received(session: &Session) {
    if let Some(g) = guarded(session) {
        g.phase.store(REQUEST, Ordering::Release);
    }
}

/// `logging`: the request is over; the next one's deadline starts with its first byte.
pub fn request_done(session: &Session) {
    if let Some(g) = guarded(session) {
        g.phase.store(IDLE, Ordering::Release);
    }
}

fn guarded(session: &Session) -> Option<&Guarded> {
    let stream = session.as_downstream().stream()?;
    (**stream).as_any().downcast_ref::<Guarded>()
}

impl Guarded {
    /// The deadline passed: a `408` goes out as far as the socket takes it at once (nothing
    /// else was written for this request), and the read fails, which ends the connection.
    fn time_out(&mut self, cx: &mut Context<'_>) -> io::Error {
        self.metrics.client_header_timeout();
        let message = format!(
            "the request header did not arrive within {:?} (limits.header_timeout)",
            self.header_timeout
        );
        let reply = answer("408 Request Timeout", &message);
        if let Poll::Ready(Ok(n)) = Pin::new(&mut self.inner).poll_write(cx, &reply) {
            if n == reply.len() {
                let _ = Pin::new(&mut self.inner).poll_flush(cx);
            }
        }
        io::Error::new(io::ErrorKind::TimedOut, message)
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let open = self.open.fetch_sub(1, Ordering::AcqRel) - 1;
        self.metrics.client_connections(open);
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.phase.load(Ordering::Acquire) {
            // Checked before reading: a client trickling bytes is never short of data.
            HEADER if this.deadline.as_mut().poll(cx).is_ready() => {
                this.phase.store(TIMED_OUT, Ordering::Release);
                return Poll::Ready(Err(this.time_out(cx)));
            }
            TIMED_OUT => return Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
            _ => {}
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        let started = buf.filled().len() > before;
        if started && this.phase.load(Ordering::Acquire) == IDLE {
            // The next request's first bytes: its header's deadline starts now.
            this.phase.store(HEADER, Ordering::Release);
            let at = Instant::now() + this.header_timeout;
            this.deadline.as_mut().reset(at);
        }
        result
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

// The rest of Pingora's stream interface, passed through.

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for Guarded {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

impl fmt::Debug for Guarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish()
    }
}

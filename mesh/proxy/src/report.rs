//! The span reporter: finished spans leave the request path through a
//! bounded queue, and a background task POSTs them in batches to a
//! Zipkin-compatible collector (`MESH_ZIPKIN_URL`).
//!
//! ```text
//! request ends --try_send--> [ queue, QUEUE_CAPACITY spans ] --> reporter task
//!                (full: drop, count)          batch of BATCH_SIZE, or every BATCH_INTERVAL
//!                                              --> POST /api/v2/spans  (JSON array)
//! ```
//!
//! A request never waits for tracing: when the collector is slow or away
//! and the queue fills, new spans are dropped and counted
//! (`micromesh_spans_dropped_total`), never buffered without bound. Envoy's
//! Zipkin tracer works the same way (`collector_endpoint`, a flush interval
//! and a minimum batch size), and so does every Zipkin reporter library.
//!
//! A batch the collector refuses with 400 names the bad span and field: it is
//! logged and dropped, never retried (it would be refused again). Other
//! failures (collector down, 5xx) are logged too, rate-limited so a missing
//! collector does not flood the log, and their spans counted as failed.

use std::time::Duration;

use futures::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::trace::Span;

/// Spans waiting to be sent, at most (about 0.6 kB each, with their
/// strings). The queue fills only when spans are made faster than the
/// collector takes them (every request sampled at full load), and then it
/// is the sidecar's largest memory: so OpenTelemetry's default batch span
/// processor's queue (`maxQueueSize`, 2048), not more. With 4096 spans and
/// batches of 100, the benchmark's sidecar at full load filled the queue
/// (13.9 MB RSS, spans dropped); with these sizes, 12.8 MB and none dropped.
pub const QUEUE_CAPACITY: usize = 2048;
/// A batch is sent as soon as it holds this many spans (OpenTelemetry's
/// `maxExportBatchSize`, 512): fewer, larger POSTs let a busy collector
/// keep up with a sidecar sampling everything...
pub const BATCH_SIZE: usize = 512;
/// ...or this long after the previous send, whichever comes first.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(500);
/// How long one POST may take.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// At most one failure line per this interval (plus the first).
pub const LOG_EVERY: Duration = Duration::from_secs(30);

// === the request side ===

/// Where the request path hands its finished spans. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SpanQueue {
    tx: mpsc::Sender<Span>,
    dropped: Counter,
}

impl SpanQueue {
    /// Queue `span`, or drop and count it when the queue is full. Never waits.
    pub fn push(&self, span: Span) {
        if self.tx.try_send(span).is_err() {
            self.dropped.inc();
        }
    }
}

/// The reporter's counters, shared with the metrics page.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub sent: Counter,
    pub dropped: Counter,
    pub failed: Counter,
}

/// A queue of `capacity` spans and the receiving end for [`run`].
pub fn queue(capacity: usize, counters: &Counters) -> (SpanQueue, mpsc::Receiver<Span>) {
    let (tx, rx) = mpsc::channel(capacity);
    (
        SpanQueue {
            tx,
            dropped: counters.dropped.clone(),
        },
        rx,
    )
}

// === where batches go ===

/// Why a batch did not reach the collector.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The collector read the batch and refused it: do not send it again.
    #[error("the collector at {url} refused the spans ({status}): {body}")]
    Refused {
        url: String,
        status: u16,
        body: String,
    },
    /// The collector answered with an error status (it may recover).
    #[error("the collector at {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    /// No answer: connection refused, timeout...
    #[error(
        "cannot reach the collector at {url}: {reason}. Is the control plane (or Zipkin) \
         running? Set MESH_ZIPKIN_URL to its /api/v2/spans URL"
    )]
    Unreachable { url: String, reason: String },
}

/// Where batches are sent: the Zipkin HTTP API, or a test's recorder.
pub trait Sink: Send + 'static {
    fn send(&mut self, batch: Vec<Span>) -> BoxFuture<'_, Result<(), SendError>>;
}

/// `POST {url}` with the batch as a JSON array: Zipkin's v2 API, which the
/// control plane's collector, Zipkin and Jaeger all accept.
#[derive(Clone, Debug)]
pub struct ZipkinHttp {
    pub url: String,
    pub client: reqwest::Client,
}

impl ZipkinHttp {
    pub fn new(url: String) -> Result<ZipkinHttp, reqwest::Error> {
        // no_proxy: the sidecar's environment may carry the app's
        // HTTP_PROXY, which points at the sidecar itself.
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(SEND_TIMEOUT)
            .build()?;
        Ok(ZipkinHttp { url, client })
    }
}

impl Sink for ZipkinHttp {
    fn send(&mut self, batch: Vec<Span>) -> BoxFuture<'_, Result<(), SendError>> {
        Box::pin(async move {
            let unreachable = |error: reqwest::Error| SendError::Unreachable {
                url: self.url.clone(),
                reason: error_chain(&error),
            };
            let rsp = self
                .client
                .post(&self.url)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(crate::trace::spans_json(&batch))
                .send()
                .await
                .map_err(unreachable)?;
            let status = rsp.status();
            if status.is_success() {
                return Ok(());
            }
            let mut body = rsp.text().await.unwrap_or_default();
            body.truncate(500);
            let (url, status) = (self.url.clone(), status.as_u16());
            Err(if status == 400 {
                SendError::Refused { url, status, body }
            } else {
                SendError::Status { url, status, body }
            })
        })
    }
}

/// An error and its causes, `a: b: c` (reqwest's own message alone says
/// only "error sending request").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

// === the reporter task ===

/// Receive spans, send them in batches, until `stop` is cancelled (then
/// send what is queued, and return) or every [`SpanQueue`] is gone.
pub async fn run(
    mut rx: mpsc::Receiver<Span>,
    mut sink: impl Sink,
    counters: Counters,
    stop: CancellationToken,
) {
    // Grown as spans arrive, not reserved: a full batch is a few hundred kB.
    let mut batch: Vec<Span> = Vec::new();
    let mut log = RateLimitedLog::default();
    let mut deadline = Instant::now() + BATCH_INTERVAL;
    loop {
        tokio::select! {
            received = rx.recv() => match received {
                Some(span) => {
                    batch.push(span);
                    if batch.len() < BATCH_SIZE {
                        continue;
                    }
                }
                None => break,
            },
            _ = tokio::time::sleep_until(deadline) => {}
            _ = stop.cancelled() => break,
        }
        // A full batch, or the interval is up.
        if !batch.is_empty() {
            flush(&mut sink, &mut batch, &counters, &mut log).await;
        }
        deadline = Instant::now() + BATCH_INTERVAL;
    }
    // Last call: what is still queued, in batches.
    while let Ok(span) = rx.try_recv() {
        batch.push(span);
        if batch.len() == BATCH_SIZE {
            flush(&mut sink, &mut batch, &counters, &mut log).await;
        }
    }
    if !batch.is_empty() {
        flush(&mut sink, &mut batch, &counters, &mut log).await;
    }
}

async fn flush(
    sink: &mut impl Sink,
    batch: &mut Vec<Span>,
    counters: &Counters,
    log: &mut RateLimitedLog,
) {
    let spans = std::mem::take(batch);
    let n = spans.len() as u64;
    match sink.send(spans).await {
        Ok(()) => {
            counters.sent.inc_by(n);
            log.recovered();
        }
        Err(error) => {
            counters.failed.inc_by(n);
            log.failure(&error, n);
        }
    }
}

/// Logs the first failure, then at most one line per [`LOG_EVERY`] saying
/// how many batches failed meanwhile; and once when sending works again.
#[derive(Debug, Default)]
struct RateLimitedLog {
    last: Option<Instant>,
    suppressed: u64,
    failing: bool,
}

impl RateLimitedLog {
    fn failure(&mut self, error: &SendError, spans: u64) {
        self.failing = true;
        let now = Instant::now();
        if self.last.is_some_and(|last| now - last < LOG_EVERY) {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            %error,
            spans,
            failed_batches_not_logged = self.suppressed,
            "spans lost"
        );
        self.last = Some(now);
        self.suppressed = 0;
    }

    fn recovered(&mut self) {
        if self.failing {
            tracing::info!("the trace collector accepts spans again");
            self.failing = false;
            self.last = None;
            self.suppressed = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::ResponseFlags;
    use crate::rng::Rng;
    use crate::trace::{Incoming, Kind, LocalService, SpanContext};
    use std::sync::Arc;

    /// A sink that records batches, for tests.
    #[derive(Clone, Debug, Default)]
    struct Recorder {
        batches: Arc<std::sync::Mutex<Vec<(Instant, usize)>>>,
        /// While set, `send` waits (a collector that hangs).
        hold: Option<Arc<tokio::sync::Notify>>,
    }

    impl Sink for Recorder {
        fn send(&mut self, batch: Vec<Span>) -> BoxFuture<'_, Result<(), SendError>> {
            Box::pin(async move {
                if let Some(hold) = &self.hold {
                    hold.notified().await;
                }
                self.batches
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((Instant::now(), batch.len()));
                Ok(())
            })
        }
    }

    fn span() -> Span {
        Span {
            context: SpanContext::open(Incoming::default(), 100.0, &Rng::seeded(1)),
            kind: Kind::Server,
            local: Arc::new(LocalService::new("hw", "v1", "hw-1", None)),
            remote: None,
            timestamp_us: 1,
            duration_us: 1,
            method: http::Method::GET,
            authority: "hw:8080".into(),
            path_and_query: "/".into(),
            status: 200,
            flags: ResponseFlags::empty(),
            upstream_cluster: crate::trace::UpstreamCluster::Inbound {
                port: 8080,
                service: "hw".into(),
            },
            upstream_address: None,
            peer: None,
            request_id: "r".into(),
            user_agent: None,
            retries: 0,
            request_size: 0,
            response_size: 0,
            principals: None,
        }
    }

    fn sizes(recorder: &Recorder) -> Vec<usize> {
        recorder
            .batches
            .lock()
            .unwrap()
            .iter()
            .map(|(_, n)| *n)
            .collect()
    }

    /// Let the reporter task run until it waits again.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn full_batches_go_at_once_and_the_rest_after_the_interval() {
        let counters = Counters::default();
        let (queue, rx) = queue(QUEUE_CAPACITY, &counters);
        let recorder = Recorder::default();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(rx, recorder.clone(), counters.clone(), stop.clone()));
        let start = Instant::now();

        let rest = BATCH_SIZE / 2;
        for _ in 0..2 * BATCH_SIZE + rest {
            queue.push(span());
        }
        settle().await;
        let full = vec![BATCH_SIZE, BATCH_SIZE];
        assert_eq!(sizes(&recorder), full, "two full batches at once");
        assert_eq!(counters.sent.get(), 2 * BATCH_SIZE as u64);

        // The rest wait for the interval, no longer.
        tokio::time::sleep(BATCH_INTERVAL - Duration::from_millis(10)).await;
        settle().await;
        assert_eq!(sizes(&recorder), full);
        tokio::time::sleep(Duration::from_millis(20)).await;
        settle().await;
        assert_eq!(sizes(&recorder), vec![BATCH_SIZE, BATCH_SIZE, rest]);
        let (at, _) = recorder.batches.lock().unwrap()[2];
        assert!(at - start <= BATCH_INTERVAL + Duration::from_millis(10));
        assert_eq!(counters.sent.get(), (2 * BATCH_SIZE + rest) as u64);
        assert_eq!(counters.dropped.get(), 0);

        // Nothing queued: nothing sent.
        tokio::time::sleep(BATCH_INTERVAL * 4).await;
        settle().await;
        assert_eq!(sizes(&recorder).len(), 3);

        // Stopping sends what is left.
        queue.push(span());
        stop.cancel();
        task.await.unwrap();
        assert_eq!(sizes(&recorder), vec![BATCH_SIZE, BATCH_SIZE, rest, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        let counters = Counters::default();
        let capacity = 10;
        let (queue, rx) = queue(capacity, &counters);
        // A collector that hangs until the test lets each send finish.
        let hold = Arc::new(tokio::sync::Notify::new());
        let recorder = Recorder {
            hold: Some(hold.clone()),
            ..Recorder::default()
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(rx, recorder.clone(), counters.clone(), stop.clone()));

        for _ in 0..capacity {
            queue.push(span());
        }
        settle().await;
        tokio::time::sleep(BATCH_INTERVAL).await;
        settle().await; // the reporter sends those 10 and waits on the collector

        let before = Instant::now();
        for _ in 0..(capacity + 25) {
            queue.push(span()); // never blocks
        }
        assert_eq!(Instant::now(), before, "pushing took no (virtual) time");
        assert_eq!(
            counters.dropped.get(),
            25,
            "only what did not fit was dropped"
        );

        // The collector answers; the queued spans go in the next batch.
        hold.notify_one();
        settle().await;
        tokio::time::sleep(BATCH_INTERVAL).await;
        settle().await;
        hold.notify_one();
        settle().await;
        assert_eq!(sizes(&recorder), vec![capacity, capacity]);
        assert_eq!(counters.sent.get(), 2 * capacity as u64);
        assert_eq!(counters.dropped.get(), 25);
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn failed_batches_are_counted_and_not_retried() {
        struct Refusing(usize);
        impl Sink for Refusing {
            fn send(&mut self, _: Vec<Span>) -> BoxFuture<'_, Result<(), SendError>> {
                self.0 += 1;
                Box::pin(async {
                    Err(SendError::Refused {
                        url: "http://collector/api/v2/spans".into(),
                        status: 400,
                        body: "span 0: traceId".into(),
                    })
                })
            }
        }
        let counters = Counters::default();
        let (queue, rx) = queue(QUEUE_CAPACITY, &counters);
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(rx, Refusing(0), counters.clone(), stop.clone()));
        for _ in 0..3 {
            queue.push(span());
        }
        tokio::time::sleep(BATCH_INTERVAL * 3).await;
        settle().await;
        assert_eq!(counters.failed.get(), 3);
        assert_eq!(counters.sent.get(), 0);
        stop.cancel();
        task.await.unwrap();
    }
}

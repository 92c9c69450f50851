//! Traces: one per message, from the edge's SMTP session to the remote server's reply.
//!
//! Off unless the standard OpenTelemetry variables name a collector
//! (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`, gRPC); then spans
//! go there by OTLP in batches (`OTEL_BSP_*` tune them). Each role adds its span to the
//! message's trace: `smtp receive` (edge) → `queue commit` (the leader, W3C trace context
//! carried in the Enqueue call's gRPC metadata) → `queue schedule` (each lease of its
//! recipients to a sender) → `smtp deliver` (the sender, with the remote reply). Between
//! commit and schedule the context waits in the leader's memory ([`Recent`]), not in the
//! replicated queue: after a leader change, deliveries of mail accepted before it start
//! traces of their own, which the `skein.queue_id` attribute ties to the first.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use opentelemetry::global;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, Tracer as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// A span's kind, a trace context and an attribute, as the roles use them.
pub use opentelemetry::{trace::SpanKind, Context, KeyValue};

/// Whether this process exports spans ([`init`] found a collector).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Exports spans while it lives; dropping it flushes what is left.
pub struct Exporting {
    provider: SdkTracerProvider,
}

impl Drop for Exporting {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// Starts exporting this process's spans as `service` when a collector is configured (see
/// the module docs); `Ok(None)` when none is. Call it inside the Tokio runtime.
pub fn init(service: &str) -> Result<Option<Exporting>, String> {
    let configured = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()));
    if !configured {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| format!("OTLP exporter: {e}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service.to_string())
                .build(),
        )
        .build();
    global::set_tracer_provider(provider.clone());
    EXPORTING.store(true, Ordering::Relaxed);
    Ok(Some(Exporting { provider }))
}

/// Starts span `name` of `kind` under `parent` (an empty context starts a trace) and returns
/// the context holding it: set attributes with [`set`], finish it with [`end`]. A process
/// that does not export makes no span and hands `parent` on as it is (nothing spent on the
/// hot path, and another process's trace still carried through this one).
pub fn start(
    name: &'static str,
    kind: SpanKind,
    parent: &Context,
    attrs: Vec<KeyValue>,
) -> Context {
    if !EXPORTING.load(Ordering::Relaxed) {
        return parent.clone();
    }
    let tracer = global::tracer("skein");
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attrs)
        .start_with_context(&tracer, parent);
    parent.with_span(span)
}

/// Adds an attribute to the span `cx` holds.
pub fn set(cx: &Context, attr: KeyValue) {
    cx.span().set_attribute(attr);
}

/// Marks the span `cx` holds failed, with why.
pub fn fail(cx: &Context, why: impl Into<String>) {
    cx.span()
        .set_status(opentelemetry::trace::Status::error(why.into()));
}

/// Ends the span `cx` holds.
pub fn end(cx: &Context) {
    cx.span().end();
}

struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct ReadMetadata<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for ReadMetadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Puts `cx`'s span into gRPC metadata (`traceparent`, W3C trace context).
pub fn inject(cx: &Context, metadata: &mut tonic::metadata::MetadataMap) {
    TraceContextPropagator::new().inject_context(cx, &mut Metadata(metadata));
}

/// The remote span a call's metadata carries, as a parent (empty when it carries none).
pub fn extract(metadata: &tonic::metadata::MetadataMap) -> Context {
    TraceContextPropagator::new().extract(&ReadMetadata(metadata))
}

/// `cx`'s span as a W3C `traceparent` value ("" when it has none worth carrying).
pub fn traceparent(cx: &Context) -> String {
    if !cx.span().span_context().is_valid() {
        return String::new();
    }
    let mut fields = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut fields);
    fields.remove("traceparent").unwrap_or_default()
}

/// The remote span a `traceparent` value names, as a parent (empty for "" or garbage).
pub fn from_traceparent(value: &str) -> Context {
    if value.is_empty() {
        return Context::new();
    }
    let fields = HashMap::from([("traceparent".to_string(), value.to_string())]);
    TraceContextPropagator::new().extract(&fields)
}

/// The trace contexts of the messages a leader committed lately, by queue id, until the
/// scheduler leases their recipients: at most `capacity`, the oldest forgotten first.
pub struct Recent {
    capacity: usize,
    inner: Mutex<(HashMap<String, String>, VecDeque<String>)>,
}

impl Recent {
    /// Holds at most `capacity` messages' contexts.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::default(),
        }
    }

    /// Remembers message `id`'s context `cx` (nothing when `cx` carries no span).
    pub fn remember(&self, id: &str, cx: &Context) {
        let tp = traceparent(cx);
        if tp.is_empty() {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *g;
        if map.insert(id.to_string(), tp).is_none() {
            order.push_back(id.to_string());
        }
        while order.len() > self.capacity {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    /// Message `id`'s context (empty when forgotten or never traced).
    pub fn get(&self, id: &str) -> Context {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.0.get(id)
            .map_or_else(Context::new, |tp| from_traceparent(tp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    fn remote(trace: u128, span: u64) -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ))
    }

    #[test]
    fn context_survives_metadata_and_traceparent_round_trips() {
        let cx = remote(0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331);
        let tp = traceparent(&cx);
        assert_eq!(
            tp,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        let back = from_traceparent(&tp);
        assert_eq!(back.span().span_context(), cx.span().span_context());
        let mut md = tonic::metadata::MetadataMap::new();
        inject(&cx, &mut md);
        assert_eq!(md.get("traceparent").unwrap(), tp.as_str());
        assert_eq!(extract(&md).span().span_context(), cx.span().span_context());
        // Nothing to carry, nothing carried; garbage gives an empty parent.
        assert_eq!(traceparent(&Context::new()), "");
        assert!(!from_traceparent("00-zz-yy-01")
            .span()
            .span_context()
            .is_valid());
        assert!(!from_traceparent("").span().span_context().is_valid());
    }

    #[test]
    fn a_process_that_does_not_export_passes_the_trace_through() {
        // No collector in unit tests: no span is made, the parent goes on as it is.
        assert!(!EXPORTING.load(Ordering::Relaxed));
        let cx = remote(0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331);
        let child = start("queue commit", SpanKind::Server, &cx, vec![]);
        assert_eq!(traceparent(&child), traceparent(&cx));
        let root = start("smtp receive", SpanKind::Server, &Context::new(), vec![]);
        assert_eq!(traceparent(&root), "");
        // Setting, failing and ending an absent span do nothing (no panic).
        set(&root, KeyValue::new("k", 1));
        fail(&root, "x");
        end(&root);
    }

    #[test]
    fn recent_contexts_are_bounded_oldest_forgotten_first() {
        let r = Recent::new(2);
        r.remember("a", &remote(1, 1));
        r.remember("b", &remote(2, 2));
        r.remember("untraced", &Context::new());
        r.remember("c", &remote(3, 3));
        assert!(!r.get("a").span().span_context().is_valid());
        assert_eq!(
            r.get("b").span().span_context().trace_id(),
            TraceId::from(2u128)
        );
        assert_eq!(
            r.get("c").span().span_context().trace_id(),
            TraceId::from(3u128)
        );
        assert!(!r.get("untraced").span().span_context().is_valid());
    }
}

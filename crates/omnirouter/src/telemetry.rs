//! Traces out of the daemon: the OpenTelemetry SDK (span ids, batching) behind a small
//! OTLP/HTTP exporter in JSON (`POST <endpoint>/v1/traces`), which every OpenTelemetry
//! Collector, Jaeger, Tempo and vendor agent accepts. Without an endpoint nothing is exported,
//! but spans still get ids, so every record's `traceparent` lets a CRM continue the trace.

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter,
};
use opentelemetry_sdk::Resource;
use serde_json::{json, Value as Json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Validated `[telemetry]`.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// OTLP/HTTP base URL (`http://collector:4318`); `None`: nothing is exported.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the spans.
    pub service_name: String,
    /// How often batched spans are sent.
    pub export_interval: Duration,
}

/// Installs the global tracer provider (exporting when an endpoint is configured); keep the
/// returned provider and [`shutdown`] it at exit, which sends what is batched.
pub fn install(settings: &TelemetrySettings) -> SdkTracerProvider {
    let resource = Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource.clone());
    if let Some(endpoint) = &settings.otlp_endpoint {
        let exporter = OtlpJson {
            url: format!("{}/v1/traces", endpoint.trim_end_matches('/')),
            client: reqwest::Client::new(),
            runtime: tokio::runtime::Handle::current(),
            resource: resource_json(&resource),
        };
        let config = BatchConfigBuilder::default()
            .with_scheduled_delay(settings.export_interval)
            .build();
        builder = builder.with_span_processor(
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(config)
                .build(),
        );
        tracing::info!(%endpoint, "exporting traces over OTLP/HTTP");
    }
    let provider = builder.build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    provider
}

/// Sends the spans still batched, waiting at most `timeout` (a shutdown must stay bounded).
pub async fn shutdown(provider: SdkTracerProvider, timeout: Duration) {
    let done = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(timeout));
    match tokio::time::timeout(timeout + Duration::from_millis(500), done).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "traces not all exported at shutdown"),
        _ => tracing::warn!("exporting the last traces did not finish in time"),
    }
}

/// The OTLP/HTTP JSON exporter.
#[derive(Debug)]
struct OtlpJson {
    url: String,
    client: reqwest::Client,
    /// The SDK exports from its own thread; requests run on the daemon's runtime.
    runtime: tokio::runtime::Handle,
    resource: Json,
}

impl SpanExporter for OtlpJson {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let body = export_request(&self.resource, &batch);
        let request = self
            .client
            .post(&self.url)
            .timeout(Duration::from_secs(10))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        let sent = self.runtime.spawn(async move { request.send().await });
        async move {
            match sent.await {
                Ok(Ok(r)) if r.status().is_success() => Ok(()),
                Ok(Ok(r)) => Err(OTelSdkError::InternalFailure(format!(
                    "the collector answered {}",
                    r.status()
                ))),
                Ok(Err(e)) => Err(OTelSdkError::InternalFailure(e.to_string())),
                Err(e) => Err(OTelSdkError::InternalFailure(e.to_string())),
            }
        }
    }
}

/// An OTLP attribute value (JSON encoding: 64-bit integers as strings).
fn any_value(value: &Value) -> Json {
    match value {
        Value::Bool(b) => json!({"boolValue": b}),
        Value::I64(i) => json!({"intValue": i.to_string()}),
        Value::F64(f) => json!({"doubleValue": f}),
        other => json!({"stringValue": other.to_string()}),
    }
}

fn attributes<'a>(kvs: impl IntoIterator<Item = (&'a opentelemetry::Key, &'a Value)>) -> Json {
    Json::Array(
        kvs.into_iter()
            .map(|(k, v)| json!({"key": k.as_str(), "value": any_value(v)}))
            .collect(),
    )
}

fn resource_json(resource: &Resource) -> Json {
    json!({"attributes": attributes(resource.iter())})
}

fn unix_nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        .to_string()
}

/// An `ExportTraceServiceRequest` in OTLP's JSON encoding (ids in hex, enums as numbers).
fn export_request(resource: &Json, batch: &[SpanData]) -> Json {
    let spans: Vec<Json> = batch
        .iter()
        .map(|s| {
            let kind = match s.span_kind {
                SpanKind::Internal => 1,
                SpanKind::Server => 2,
                SpanKind::Client => 3,
                SpanKind::Producer => 4,
                SpanKind::Consumer => 5,
            };
            let status = match &s.status {
                Status::Unset => json!({"code": 0}),
                Status::Ok => json!({"code": 1}),
                Status::Error { description } => json!({"code": 2, "message": description}),
            };
            let mut span = json!({
                "traceId": s.span_context.trace_id().to_string(),
                "spanId": s.span_context.span_id().to_string(),
                "name": s.name,
                "kind": kind,
                "startTimeUnixNano": unix_nanos(s.start_time),
                "endTimeUnixNano": unix_nanos(s.end_time),
                "attributes": attributes(s.attributes.iter().map(|kv| (&kv.key, &kv.value))),
                "status": status,
            });
            if s.parent_span_id != opentelemetry::trace::SpanId::INVALID {
                span["parentSpanId"] = json!(s.parent_span_id.to_string());
            }
            span
        })
        .collect();
    json!({"resourceSpans": [{
        "resource": resource,
        "scopeSpans": [{"scope": {"name": "omnirouter"}, "spans": spans}],
    }]})
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    #[test]
    fn spans_are_encoded_as_otlp_json() {
        let trace = TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap();
        let span = SpanData {
            span_context: SpanContext::new(
                trace,
                SpanId::from_hex("00f067aa0ba902b7").unwrap(),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::from_hex("b7ad6b7169203331").unwrap(),
            parent_span_is_remote: true,
            span_kind: SpanKind::Server,
            name: "POST /v1/inbound/{tenant}".into(),
            start_time: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_001),
            end_time: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_500_000_000),
            attributes: vec![
                KeyValue::new("http.route", "/v1/inbound/{tenant}"),
                KeyValue::new("http.response.status_code", 202_i64),
            ],
            dropped_attributes_count: 0,
            events: opentelemetry_sdk::trace::SpanEvents::default(),
            links: opentelemetry_sdk::trace::SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: opentelemetry::InstrumentationScope::builder("omnirouter")
                .build(),
        };
        let resource = json!({"attributes": []});
        let body = export_request(&resource, &[span]);
        let s = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(s["spanId"], "00f067aa0ba902b7");
        assert_eq!(s["parentSpanId"], "b7ad6b7169203331");
        assert_eq!(s["kind"], 2);
        assert_eq!(s["startTimeUnixNano"], "1700000000000000001");
        assert_eq!(
            s["attributes"][1],
            json!({"key": "http.response.status_code", "value": {"intValue": "202"}})
        );
    }
}

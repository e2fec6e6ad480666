//! What an SRE watches besides the customer-care figures: every HTTP request by route (the
//! public webhooks, the agent API, live chat), the process (CPU, memory, open files, threads)
//! and the Tokio runtime the daemon runs on.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use std::time::Instant;

/// Requests by route template, method and status, and their durations.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl HttpMetrics {
    /// Registers the families in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "omni_http_requests_total",
                "HTTP requests answered, by route template, method and status code.",
            ),
            &["route", "method", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "omni_http_request_duration_seconds",
                "Time from a request's arrival to its response's head, by route template and method (a WebSocket: to the upgrade).",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["route", "method"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self { requests, duration })
    }
}

/// The method as a bounded label: the ones HTTP defines for us, anything else `other`.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Middleware (installed with `route_layer`, where the matched route is known): counts and
/// times each request under its route template, never its path, so a tenant or a contact id
/// is never a label value; and traces it: a server span in the caller's trace (its
/// `traceparent` header) or a new one, whose context every record the request publishes
/// carries.
pub async fn track(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    use omni_bus::trace;
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(request.method());
    let parent = request
        .headers()
        .get(trace::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let span = trace::start(
        format!("{method} {route}"),
        trace::Kind::Server,
        parent.as_deref(),
        vec![
            trace::KeyValue::new("http.request.method", method),
            trace::KeyValue::new("http.route", route.clone()),
        ],
    );
    let started = Instant::now();
    let response = trace::in_trace(trace::traceparent_of(&span), next.run(request)).await;
    {
        use opentelemetry::trace::TraceContextExt as _;
        span.span().set_attribute(trace::KeyValue::new(
            "http.response.status_code",
            i64::from(response.status().as_u16()),
        ));
    }
    metrics
        .duration
        .with_label_values(&[route.as_str(), method])
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .with_label_values(&[route.as_str(), method, response.status().as_str()])
        .inc();
    response
}

/// The process's CPU seconds, resident and virtual memory, open and maximum file
/// descriptors, threads and start time (`process_*`, read from /proc at each scrape).
pub fn register_process(registry: &Registry) -> prometheus::Result<()> {
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))
}

/// The Tokio runtime's stable metrics, read at each scrape.
struct RuntimeCollector {
    runtime: tokio::runtime::Handle,
    workers: IntGauge,
    alive_tasks: IntGauge,
    global_queue_depth: IntGauge,
}

impl Collector for RuntimeCollector {
    fn desc(&self) -> Vec<&Desc> {
        [&self.workers, &self.alive_tasks, &self.global_queue_depth]
            .into_iter()
            .flat_map(Collector::desc)
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let m = self.runtime.metrics();
        let set = |g: &IntGauge, n: usize| g.set(i64::try_from(n).unwrap_or(i64::MAX));
        set(&self.workers, m.num_workers());
        set(&self.alive_tasks, m.num_alive_tasks());
        set(&self.global_queue_depth, m.global_queue_depth());
        [&self.workers, &self.alive_tasks, &self.global_queue_depth]
            .into_iter()
            .flat_map(Collector::collect)
            .collect()
    }
}

/// Registers the runtime's gauges for `runtime` (the daemon's).
pub fn register_runtime(
    registry: &Registry,
    runtime: tokio::runtime::Handle,
) -> prometheus::Result<()> {
    let gauge = |name: &str, help: &str| IntGauge::with_opts(Opts::new(name, help));
    registry.register(Box::new(RuntimeCollector {
        runtime,
        workers: gauge(
            "omni_tokio_workers",
            "Worker threads of the Tokio runtime the daemon runs on.",
        )?,
        alive_tasks: gauge(
            "omni_tokio_alive_tasks",
            "Tasks alive on the runtime (sockets, readers, handlers): a steady climb is a leak.",
        )?,
        global_queue_depth: gauge(
            "omni_tokio_global_queue_depth",
            "Tasks waiting in the runtime's global queue: above zero for long, the workers are saturated.",
        )?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn requests_are_counted_by_route_template_not_path() {
        let registry = Registry::new();
        let metrics = HttpMetrics::register(&registry).unwrap();
        let app = axum::Router::new()
            .route("/v1/tenants/{tenant}/queues", get(|| async { "ok" }))
            .route_layer(axum::middleware::from_fn_with_state(metrics, track));
        for tenant in ["acme", "demo"] {
            let request = Request::builder()
                .uri(format!("/v1/tenants/{tenant}/queues"))
                .body(axum::body::Body::empty())
                .unwrap();
            assert_eq!(app.clone().oneshot(request).await.unwrap().status(), 200);
        }
        let mut text = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut text,
        )
        .unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains(r#"omni_http_requests_total{method="GET",route="/v1/tenants/{tenant}/queues",status="200"} 2"#),
            "{text}"
        );
        assert!(
            !text.contains("acme"),
            "a path value became a label: {text}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_runtime_and_process_are_on_the_registry() {
        let registry = Registry::new();
        register_runtime(&registry, tokio::runtime::Handle::current()).unwrap();
        register_process(&registry).unwrap();
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        for name in [
            "omni_tokio_workers",
            "omni_tokio_alive_tasks",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_threads",
            "process_cpu_seconds_total",
        ] {
            assert!(
                names.iter().any(|n| n == name),
                "{name} missing from {names:?}"
            );
        }
        let workers = registry
            .gather()
            .into_iter()
            .find(|f| f.name() == "omni_tokio_workers")
            .unwrap();
        assert_eq!(workers.get_metric()[0].get_gauge().get_value(), 2.0);
    }
}

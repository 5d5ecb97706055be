//! OpenTelemetry's OTLP/HTTP trace intake (`POST /v1/traces`): an app's
//! own spans, sent by an OpenTelemetry SDK, join the trace its sidecars
//! reported and are read back through Zipkin's API.
//!
//! The story of each test: the sidecars report a request (Zipkin JSON, as
//! `mesh/proxy/src/report.rs` does); the app, which read `traceparent` from
//! the request its sidecar handed it, exports one span of its own work as
//! OTLP, protobuf or JSON, as an SDK's exporter would (gzip included); the
//! trace then holds both, the app's span under the sidecar's SERVER span.

mod support;

use std::io::Write;

use mesh_control::collector::otlp::{
    AnyValue, ExportTraceServiceRequest, InstrumentationScope, KeyValue, OtlpSpan, Resource,
    ResourceSpans, RpcStatus, ScopeSpans, Status, Value,
};
use prost::Message;
use reqwest::StatusCode;
use serde_json::{Value as Json, json};

use support::{Control, gateway_calls_ui, span};

const TRACE: &str = "5b8efff798038103d269b633813fc60c";
/// The guestbook-ui sidecar's SERVER span (`b1` of `gateway_calls_ui`):
/// the app's spans hang under it.
const SIDECAR_SERVER: &str = "00000000000000b1";

/// The sidecars' part: gateway CLIENT -> guestbook-ui SERVER.
async fn sidecars_report(control: &Control) {
    let spans = Json::Array(gateway_calls_ui(TRACE).to_vec());
    assert_eq!(
        control.post_spans(spans).await.status(),
        StatusCode::ACCEPTED
    );
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn string_attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::String(value.into())),
        }),
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

async fn trace(control: &Control) -> Vec<Json> {
    let trace = control.get(&format!("/api/v2/trace/{TRACE}")).await;
    trace.as_array().unwrap().clone()
}

#[tokio::test]
async fn an_apps_otlp_protobuf_span_joins_its_sidecars_trace() {
    let control = Control::start().await;
    sidecars_report(&control).await;

    // The app's SDK: "render page" inside the request, an INTERNAL span
    // whose parent is the span id it read from traceparent.
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string_attribute("service.name", "guestbook-ui")],
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "guestbook-ui".into(),
                    version: "0.1.0".into(),
                }),
                spans: vec![OtlpSpan {
                    trace_id: hex_bytes(TRACE),
                    span_id: hex_bytes("00000000000000d1"),
                    parent_span_id: hex_bytes(SIDECAR_SERVER),
                    name: "render page".into(),
                    kind: 1,
                    start_time_unix_nano: 1_000_600_000,
                    end_time_unix_nano: 1_002_600_000,
                    attributes: vec![string_attribute("guestbook.entries", "3")],
                    events: vec![],
                    status: Some(Status {
                        message: "sentiment timed out".into(),
                        code: 2,
                    }),
                }],
            }],
        }],
    };
    let response = control
        .http
        .post(control.url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(request.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-protobuf");

    let spans = trace(&control).await;
    assert_eq!(spans.len(), 3, "two sidecar spans and the app's: {spans:?}");
    let app = spans
        .iter()
        .find(|s| s["id"] == "00000000000000d1")
        .unwrap();
    assert_eq!(app["parentId"], SIDECAR_SERVER);
    assert_eq!(app["localEndpoint"]["serviceName"], "guestbook-ui");
    assert_eq!(app["timestamp"], 1_000_600);
    assert_eq!(app["duration"], 2_000);
    assert!(app.get("kind").is_none(), "INTERNAL has no Zipkin kind");
    assert_eq!(app["tags"]["guestbook.entries"], "3");
    assert_eq!(app["tags"]["error"], "sentiment timed out");
    assert_eq!(app["tags"]["otel.scope.name"], "guestbook-ui");

    // And it shows where a Zipkin UI looks for it.
    let names = control.get("/api/v2/spans?serviceName=guestbook-ui").await;
    assert!(
        names.as_array().unwrap().contains(&json!("render page")),
        "{names}"
    );
}

#[tokio::test]
async fn an_apps_otlp_json_span_gzipped_joins_its_sidecars_trace() {
    let control = Control::start().await;
    sidecars_report(&control).await;
    let body = json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "guestbook-ui"}}]},
        "scopeSpans": [{"scope": {"name": "guestbook-ui"}, "spans": [{
            "traceId": TRACE, "spanId": "00000000000000d2", "parentSpanId": SIDECAR_SERVER,
            "name": "call helloworld", "kind": 3,
            "startTimeUnixNano": "1000700000", "endTimeUnixNano": "1001700000",
            "attributes": [
                {"key": "peer.service", "value": {"stringValue": "helloworld-service"}},
                {"key": "http.response.status_code", "value": {"intValue": "200"}}
            ]
        }]}]
    }]});
    let response = control
        .http
        .post(control.url("/v1/traces"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gzip(body.to_string().as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Json>().await.unwrap(), json!({}));

    let spans = trace(&control).await;
    let app = spans
        .iter()
        .find(|s| s["id"] == "00000000000000d2")
        .unwrap();
    assert_eq!(app["parentId"], SIDECAR_SERVER);
    assert_eq!(app["kind"], "CLIENT");
    assert_eq!(app["remoteEndpoint"]["serviceName"], "helloworld-service");
    assert_eq!(app["tags"]["http.response.status_code"], "200");
    let remote = control
        .get("/api/v2/remoteServices?serviceName=guestbook-ui")
        .await;
    assert_eq!(remote, json!(["helloworld-service"]));
}

#[tokio::test]
async fn a_bad_otlp_request_is_refused_in_its_own_format() {
    let control = Control::start().await;

    // Base64 ids (the protobuf JSON mapping's bytes) are not OTLP JSON's.
    let response = control
        .http
        .post(control.url("/v1/traces"))
        .header("content-type", "application/json")
        .body(
            json!({"resourceSpans": [{"scopeSpans": [{"spans": [
                {"traceId": "W47/95gDgQPSabYzgT/GDA==", "spanId": "7uGbfsPBsXQ="}
            ]}]}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let status: Json = response.json().await.unwrap();
    assert_eq!(status["code"], 3, "INVALID_ARGUMENT: {status}");
    assert!(
        status["message"].as_str().unwrap().contains("hex"),
        "{status}"
    );

    // A protobuf body that is not an ExportTraceServiceRequest: the
    // answer is a google.rpc.Status in protobuf.
    let response = control
        .http
        .post(control.url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(vec![0x0a, 0xff, 0xff])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let status = RpcStatus::decode(response.bytes().await.unwrap()).unwrap();
    assert_eq!(status.code, 3);
    assert!(
        status.message.contains("ExportTraceServiceRequest"),
        "{status:?}"
    );

    // A span with no ids at all is named by its position.
    let response = control
        .http
        .post(control.url("/v1/traces"))
        .header("content-type", "application/json")
        .body(r#"{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": "x"}]}]}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let status: Json = response.json().await.unwrap();
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("span 0") && message.contains("traceId"),
        "{message}"
    );

    // OTLP/HTTP defines protobuf and JSON only.
    let response = control
        .http
        .post(control.url("/v1/traces"))
        .header("content-type", "application/grpc")
        .body(vec![0])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        control.get("/api/v1/collector").await["spans"],
        0,
        "nothing stored"
    );
}

/// The Guestbook's helloworld-service (Python, standard library) reports
/// its own "greet" span over OTLP JSON when OpenTelemetry's endpoint
/// variable is set; here against the real collector, with the request
/// carrying the `traceparent` its sidecar would have written.
#[tokio::test]
async fn helloworld_services_own_span_joins_the_trace_its_sidecar_started() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let control = Control::start().await;
    // The helloworld sidecar's SERVER span, which the app's span goes under.
    let sidecar_server = "00000000000000c1";
    let spans = json!([span(
        TRACE,
        sidecar_server,
        Some("00000000000000b2"),
        "SERVER",
        "helloworld-service",
        1_000_000,
        9_000
    )]);
    control.post_spans(spans).await;

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../services/helloworld-service/helloworld.py"
    );
    let mut app = KillOnDrop(
        Command::new("python3")
            .arg(script)
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                control.url("/v1/traces"),
            )
            .stderr(Stdio::piped())
            .spawn()
            .expect(
                "python3 runs helloworld-service (scripts/setup-test-machine.sh installs python3)",
            ),
    );
    // "helloworld-service v1 listening on http://127.0.0.1:PORT (...)"
    let mut stderr = BufReader::new(app.0.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("helloworld-service did not start: {line}"))
        .to_string();

    let answer = control
        .http
        .get(format!("{base}/hello/ray"))
        .header("traceparent", format!("00-{TRACE}-{sidecar_server}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);

    let greet = mesh_testkit::wait_for(
        "helloworld-service's span",
        mesh_testkit::CONVERGE,
        || async {
            let spans = trace(&control).await;
            Ok(spans.into_iter().find(|s| s["name"] == "greet"))
        },
    )
    .await
    .unwrap();
    assert_eq!(greet["parentId"], sidecar_server);
    assert_eq!(greet["localEndpoint"]["serviceName"], "helloworld-service");
    assert_eq!(greet["tags"]["http.response.status_code"], "200");
}

/// A child process that is ended when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

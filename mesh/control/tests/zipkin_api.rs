//! The collector's Zipkin API held to what Zipkin's own server does, one
//! rule per test, over real HTTP against an in-process control plane.
//!
//! Each rule here is one a Zipkin client or Zipkin's UI relies on
//! (openzipkin's `zipkin2-api.yaml` and the server's code: `zipkin2.Span`,
//! `QueryRequest`, `ZipkinHttpCollector`, `ZipkinQueryApiV2`, its CORS
//! configuration). The spans are posted the way the reporters post them:
//! OpenTelemetry's Zipkin exporter (gzip JSON), a protobuf reporter, a
//! sidecar (plain JSON).

mod support;

use std::io::Write;

use mesh_control::collector::{ListOfSpans, ProtoEndpoint, ProtoSpan};
use prost::Message;
use reqwest::StatusCode;
use serde_json::{Value, json};

use support::{Control, calls, gateway_calls_ui, span, ui_calls_helloworld};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// GET a path and return its status and body (JSON when it parses).
async fn get(control: &Control, path: &str) -> (StatusCode, Value) {
    let response = control.http.get(control.url(path)).send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The error message of a refused request.
fn message(body: &Value) -> String {
    body["error"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn gzip_json_is_read_as_opentelemetrys_zipkin_exporter_sends_it() {
    let control = Control::start().await;
    // OpenTelemetry's Zipkin exporter: a JSON array, gzip, with its headers.
    let body = json!([calls(
        span(
            TRACE,
            "00f067aa0ba902b7",
            None,
            "CLIENT",
            "frontend",
            1_000_000,
            900
        ),
        "helloworld-service"
    )]);
    let response = control
        .http
        .post(control.url("/api/v2/spans"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gzip(body.to_string().as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let (status, trace) = get(&control, &format!("/api/v2/trace/{TRACE}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(trace[0]["localEndpoint"]["serviceName"], "frontend");
    assert_eq!(
        trace[0]["remoteEndpoint"]["serviceName"],
        "helloworld-service"
    );

    // A body that says gzip but is not: 400, naming the header.
    let response = control
        .http
        .post(control.url("/api/v2/spans"))
        .header("content-encoding", "gzip")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error: Value = response.json().await.unwrap();
    assert!(message(&error).contains("gunzip"), "{error}");
}

#[tokio::test]
async fn protobuf_list_of_spans_is_read_and_other_formats_get_a_415() {
    let control = Control::start().await;
    let list = ListOfSpans {
        spans: vec![ProtoSpan {
            trace_id: (1..=16).collect(),
            id: vec![0, 0, 0, 0, 0, 0, 0, 0xb1],
            kind: 2,
            name: "get /hello".into(),
            timestamp: 1_000_000,
            duration: 700,
            local_endpoint: Some(ProtoEndpoint {
                service_name: "helloworld-service".into(),
                ipv4: vec![127, 0, 0, 1],
                port: 8080,
                ..ProtoEndpoint::default()
            }),
            tags: [("http.status_code".to_string(), "200".to_string())].into(),
            ..ProtoSpan::default()
        }],
    };
    let response = control
        .http
        .post(control.url("/api/v2/spans"))
        .header("content-type", "application/x-protobuf")
        .body(list.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let (_, trace) = get(&control, "/api/v2/trace/0102030405060708090a0b0c0d0e0f10").await;
    assert_eq!(
        trace,
        json!([{
            "traceId": "0102030405060708090a0b0c0d0e0f10", "id": "00000000000000b1",
            "kind": "SERVER", "name": "get /hello", "timestamp": 1_000_000, "duration": 700,
            "localEndpoint": {"serviceName": "helloworld-service", "ipv4": "127.0.0.1", "port": 8080},
            "tags": {"http.status_code": "200"}
        }])
    );

    // Zipkin v1's Thrift is not read: 415 names what is.
    let response = control
        .http
        .post(control.url("/api/v2/spans"))
        .header("content-type", "application/x-thrift")
        .body(vec![0x0c, 0x00])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let error: Value = response.json().await.unwrap();
    assert!(
        message(&error).contains("application/x-protobuf"),
        "{error}"
    );

    // An empty body is an empty batch, as in Zipkin.
    let response = control
        .http
        .post(control.url("/api/v2/spans"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn an_all_zero_trace_id_is_refused_and_an_all_zero_parent_is_a_root() {
    let control = Control::start().await;
    let zero_trace = json!([{"traceId": "0".repeat(32), "id": "00000000000000a1"}]);
    let response = control.post_spans(zero_trace).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error: Value = response.json().await.unwrap();
    assert!(
        message(&error).contains("traceId") && message(&error).contains("all zeros"),
        "{error}"
    );

    let root =
        json!([{"traceId": TRACE, "id": "00000000000000a1", "parentId": "0000000000000000"}]);
    assert_eq!(
        control.post_spans(root).await.status(),
        StatusCode::ACCEPTED
    );
    let (_, trace) = get(&control, &format!("/api/v2/trace/{TRACE}")).await;
    assert!(trace[0].get("parentId").is_none(), "a root: {trace}");
}

#[tokio::test]
async fn ids_are_lowercase_hex_only() {
    let control = Control::start().await;
    let upper = json!([{"traceId": TRACE.to_uppercase(), "id": "00000000000000a1"}]);
    let response = control.post_spans(upper).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error: Value = response.json().await.unwrap();
    assert!(message(&error).contains("lowercase"), "{error}");
    // Nothing was stored under another spelling.
    assert_eq!(get(&control, "/api/v2/services").await.1, json!([]));
    // A lookup with uppercase is refused the same way, not a silent 404.
    let (status, _) = get(&control, &format!("/api/v2/trace/{}", TRACE.to_uppercase())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_128_bit_id_with_a_zero_upper_half_is_found_by_its_64_bit_form() {
    let control = Control::start().await;
    let padded = "0000000000000000a3ce929d0e0e4736";
    let spans = json!([{"traceId": padded, "id": "00000000000000a1"}]);
    assert_eq!(
        control.post_spans(spans).await.status(),
        StatusCode::ACCEPTED
    );
    for lookup in ["a3ce929d0e0e4736", padded] {
        let (status, trace) = get(&control, &format!("/api/v2/trace/{lookup}")).await;
        assert_eq!(status, StatusCode::OK, "lookup {lookup}");
        assert_eq!(trace[0]["traceId"], "a3ce929d0e0e4736");
    }
}

#[tokio::test]
async fn negative_or_zero_times_are_absent_and_numeric_tags_accepted() {
    let control = Control::start().await;
    let spans = json!([
        {"traceId": TRACE, "id": "00000000000000a1", "timestamp": -1, "duration": 0,
         "localEndpoint": {"serviceName": "frontend"},
         "tags": {"http.status_code": 503, "retry.count": 2}},
        {"traceId": TRACE, "id": "00000000000000a2", "timestamp": 0, "duration": -40}
    ]);
    assert_eq!(
        control.post_spans(spans).await.status(),
        StatusCode::ACCEPTED
    );
    let (_, trace) = get(&control, &format!("/api/v2/trace/{TRACE}")).await;
    for span in trace.as_array().unwrap() {
        assert!(span.get("timestamp").is_none(), "{span}");
        assert!(span.get("duration").is_none(), "{span}");
    }
    assert_eq!(
        trace[0]["tags"],
        json!({"http.status_code": "503", "retry.count": "2"})
    );
}

#[tokio::test]
async fn an_empty_service_name_is_answered_with_an_empty_list() {
    let control = Control::start().await;
    let spans = json!([span(
        TRACE,
        "00000000000000a1",
        None,
        "SERVER",
        "frontend",
        1_000_000,
        10
    )]);
    control.post_spans(spans).await;
    for path in [
        "/api/v2/spans?serviceName=",
        "/api/v2/remoteServices?serviceName=",
    ] {
        assert_eq!(
            get(&control, path).await,
            (StatusCode::OK, json!([])),
            "{path}"
        );
    }
    // Without the parameter at all it is a 400, as in Zipkin.
    let (status, error) = get(&control, "/api/v2/spans").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message(&error).contains("serviceName"), "{error}");
    assert_eq!(
        get(&control, "/api/v2/spans?serviceName=frontend").await.1,
        json!(["frontend:8080/"])
    );
}

#[tokio::test]
async fn bad_limit_lookback_and_durations_are_the_400s_zipkin_gives() {
    let control = Control::start().await;
    let refused = [
        ("limit=0", "limit"),
        ("limit=-1", "limit"),
        ("limit=ten", "limit"),
        ("lookback=0", "lookback"),
        ("lookback=-5", "lookback"),
        ("endTs=0", "endTs"),
        ("maxDuration=100", "only valid with minDuration"),
        ("minDuration=0", "minDuration"),
        ("minDuration=500&maxDuration=100", "below minDuration"),
        ("maxDuration=abc&minDuration=1", "maxDuration"),
    ];
    for (query, says) in refused {
        let (status, error) = get(&control, &format!("/api/v2/traces?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {error}");
        assert!(message(&error).contains(says), "{query}: {error}");
    }
    let accepted = [
        "limit=1",
        "minDuration=1&maxDuration=1",
        "lookback=1&endTs=1",
    ];
    for query in accepted {
        let (status, _) = get(&control, &format!("/api/v2/traces?{query}")).await;
        assert_eq!(status, StatusCode::OK, "{query}");
    }
}

#[tokio::test]
async fn trace_many_returns_the_traces_asked_for() {
    let control = Control::start().await;
    let (a, b) = ("000000000000000a", "000000000000000b");
    let spans = json!([
        span(
            a,
            "00000000000000a1",
            None,
            "SERVER",
            "frontend",
            1_000_000,
            10
        ),
        span(
            b,
            "00000000000000b1",
            None,
            "SERVER",
            "frontend",
            2_000_000,
            10
        ),
    ]);
    control.post_spans(spans).await;
    let (status, traces) = get(&control, &format!("/api/v2/traceMany?traceIds={a},{b},c")).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = traces
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t[0]["traceId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [a, b], "the missing trace c is left out");

    for (query, says) in [
        ("traceIds=", "traceIds"),
        ("", "traceIds"),
        (&format!("traceIds={a}") as &str, "/api/v2/trace/"),
        (&format!("traceIds={a},{b},{a}"), "twice"),
        ("traceIds=a,XYZ", "lowercase"),
    ] {
        let (status, error) = get(&control, &format!("/api/v2/traceMany?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert!(message(&error).contains(says), "{query}: {error}");
    }
}

#[tokio::test]
async fn dependencies_draw_each_call_once() {
    let control = Control::start().await;
    let [ui_calls, mut failed] = ui_calls_helloworld(TRACE, Some("00000000000000b1"));
    failed["tags"]["error"] = json!("true");
    let mut spans = gateway_calls_ui(TRACE).to_vec();
    spans.extend([ui_calls, failed]);
    let spans = Value::Array(spans);
    control.post_spans(spans).await;
    let (status, links) = get(&control, "/api/v2/dependencies?endTs=2000").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        links,
        json!([
            {"parent": "guestbook-ui", "child": "helloworld-service", "callCount": 1, "errorCount": 1},
            {"parent": "ingressgateway", "child": "guestbook-ui", "callCount": 1},
        ])
    );
    // Outside the window: no links.
    let (_, none) = get(&control, "/api/v2/dependencies?endTs=500").await;
    assert_eq!(none, json!([]));
    for query in ["", "endTs=0", "endTs=2000&lookback=0"] {
        let (status, error) = get(&control, &format!("/api/v2/dependencies?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert!(message(&error).contains("endTs") || message(&error).contains("lookback"));
    }
}

#[tokio::test]
async fn autocomplete_offers_the_sidecars_tags_and_their_values() {
    let control = Control::start().await;
    let mut slow = span(
        TRACE,
        "00000000000000a1",
        None,
        "SERVER",
        "frontend",
        1_000_000,
        10,
    );
    slow["tags"]["http.status_code"] = json!("503");
    let spans = json!([
        slow,
        span(
            TRACE,
            "00000000000000a2",
            Some("00000000000000a1"),
            "SERVER",
            "backend",
            1_000_001,
            5
        ),
    ]);
    control.post_spans(spans).await;
    let (_, keys) = get(&control, "/api/v2/autocompleteKeys").await;
    assert!(
        keys.as_array()
            .unwrap()
            .contains(&json!("http.status_code")),
        "{keys}"
    );
    let (_, values) = get(&control, "/api/v2/autocompleteValues?key=http.status_code").await;
    assert_eq!(values, json!(["200", "503"]));
    // A key that is not offered has no values (Zipkin's rule), and the
    // parameter is required.
    let (_, none) = get(&control, "/api/v2/autocompleteValues?key=instance").await;
    assert_eq!(none, json!([]));
    let (status, _) = get(&control, "/api/v2/autocompleteValues").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_zipkin_ui_on_another_origin_may_read_and_post() {
    let control = Control::start().await;
    let origin = "http://localhost:9411";
    // The browser's preflight before a POST with a JSON body.
    let preflight = control
        .http
        .request(reqwest::Method::OPTIONS, control.url("/api/v2/spans"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), StatusCode::OK);
    let headers = preflight.headers();
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert!(
        headers["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert!(
        headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("content-type")
    );
    assert!(headers.get("access-control-allow-credentials").is_none());

    // The read itself carries the header that lets the page see it.
    let read = control
        .http
        .get(control.url("/api/v2/services"))
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    assert_eq!(read.headers()["access-control-allow-origin"], "*");

    // Zipkin allows GET and POST only, and no other request headers.
    for (method, headers) in [("DELETE", "content-type"), ("POST", "authorization")] {
        let refused = control
            .http
            .request(reqwest::Method::OPTIONS, control.url("/api/v2/spans"))
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", headers)
            .send()
            .await
            .unwrap();
        assert_eq!(
            refused.status(),
            StatusCode::FORBIDDEN,
            "{method} {headers}"
        );
        assert!(
            refused
                .headers()
                .get("access-control-allow-origin")
                .is_none()
        );
    }
    // Without an Origin (curl, a sidecar) nothing CORS is added.
    let plain = control
        .http
        .get(control.url("/api/v2/services"))
        .send()
        .await
        .unwrap();
    assert!(plain.headers().get("access-control-allow-origin").is_none());
}

//! guestbook-service's HTTP API, driven with `app(state).oneshot(request)`:
//! no server for the service itself. Where it calls sentiment-service, a tiny
//! fake sentiment-service runs on 127.0.0.1:0 and is reached directly (the
//! client is built with `.no_proxy()`, so a developer's HTTP_PROXY is ignored).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::{
    Json, Router,
    body::Body,
    http::{HeaderMap, Request, StatusCode},
    routing::post,
};
use guestbook_service::{AppState, Config, Store, app};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

// === Helpers ===

/// What the fake sentiment-service saw: each request's headers and body.
type Seen = Arc<Mutex<Vec<(HeaderMap, Value)>>>;

/// Serve `router` on 127.0.0.1:0; returns its base URL. The task ends with the test's runtime.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// A fake sentiment-service: "positive" if the text contains "great", else
/// "neutral"; records what it was sent.
async fn fake_sentiment() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let router = Router::new().route(
        "/sentiment",
        post(move |headers: HeaderMap, Json(body): Json<Value>| {
            let record = record.clone();
            async move {
                let text = body["text"].as_str().unwrap_or_default().to_string();
                record.lock().unwrap().push((headers, body));
                let sentiment = if text.contains("great") {
                    "positive"
                } else {
                    "neutral"
                };
                Json(json!({ "sentiment": sentiment, "score": 1 }))
            }
        }),
    );
    (serve(router).await, seen)
}

fn state(sentiment_url: &str, sentiment_timeout: Duration) -> AppState {
    AppState {
        config: Arc::new(Config {
            host: "127.0.0.1".into(),
            port: 0,
            version: "v1".into(),
            hostname: "gb-test".into(),
            database_path: ":memory:".into(),
            sentiment_url: sentiment_url.into(),
            sentiment_timeout,
        }),
        store: Store::open(":memory:").unwrap(),
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
    }
}

async fn call(router: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

fn post_json(body: &str) -> Request<Body> {
    Request::post("/messages")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

// === Tests ===

#[tokio::test]
async fn invalid_posts_are_400_naming_the_field_and_store_nothing() {
    let (url, seen) = fake_sentiment().await;
    let router = app(state(&url, Duration::from_secs(2)));

    let long_message = "x".repeat(501);
    let cases: Vec<(String, Option<&str>)> = vec![
        ("{\"name\": \"ray\"".into(), None),
        ("\"just a string\"".into(), None),
        (r#"{"message": "hi"}"#.into(), Some("name")),
        (r#"{"name": "", "message": "hi"}"#.into(), Some("name")),
        (r#"{"name": 42, "message": "hi"}"#.into(), Some("name")),
        (
            json!({"name": "r".repeat(65), "message": "hi"}).to_string(),
            Some("name"),
        ),
        (
            r#"{"name": "ray", "message": "   "}"#.into(),
            Some("message"),
        ),
        (
            r#"{"name": "ray", "message": true}"#.into(),
            Some("message"),
        ),
        (
            json!({"name": "ray", "message": long_message}).to_string(),
            Some("message"),
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = call(&router, post_json(&body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}: {answer}"
        );
        assert_eq!(
            answer.get("field").and_then(Value::as_str),
            field,
            "{body}: {answer}"
        );
    }

    // Validation happens before anything else: no sentiment call, no row.
    assert!(seen.lock().unwrap().is_empty());
    assert_eq!(
        call(&router, get("/messages")).await,
        (StatusCode::OK, json!([]))
    );
}

#[tokio::test]
async fn store_and_list_round_trip_with_sentiment_and_trace_headers() {
    let (url, seen) = fake_sentiment().await;
    let router = app(state(&url, Duration::from_secs(2)));

    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let request = Request::post("/messages")
        .header("content-type", "application/json")
        .header("traceparent", traceparent)
        .header("x-request-id", "req-42")
        .header("x-b3-sampled", "1")
        .header("authorization", "Bearer not-for-sentiment")
        .body(Body::from(r#"{"name": " ray ", "message": "great talk"}"#))
        .unwrap();
    let (status, first) = call(&router, request).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["name"], "ray");
    assert_eq!(first["message"], "great talk");
    assert_eq!(first["sentiment"], "positive");
    assert!(
        first["id"].is_i64() && first["timestamp"].is_string(),
        "{first}"
    );

    {
        let seen = seen.lock().unwrap();
        let (headers, body) = &seen[0];
        assert_eq!(body["text"], "great talk");
        // The trace headers crossed the app; other headers did not.
        assert_eq!(headers["traceparent"], traceparent);
        assert_eq!(headers["x-request-id"], "req-42");
        assert_eq!(headers["x-b3-sampled"], "1");
        assert!(headers.get("authorization").is_none());
    }

    let (status, second) = call(&router, post_json(r#"{"name": "ana", "message": "hola"}"#)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(second["sentiment"], "neutral");

    // Newest first, exactly as stored.
    let (status, list) = call(&router, get("/messages")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list, json!([second, first]));
}

#[tokio::test]
async fn list_returns_the_newest_fifty() {
    let (url, _) = fake_sentiment().await;
    let state = state(&url, Duration::from_secs(2));
    for i in 0..55 {
        state
            .store
            .insert("ray", &format!("message {i}"), "neutral")
            .unwrap();
    }
    let (status, list) = call(&app(state), get("/messages")).await;
    assert_eq!(status, StatusCode::OK);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 50);
    assert_eq!(list[0]["message"], "message 54");
    assert_eq!(list[49]["message"], "message 5");
}

/// Post one message with sentiment-service at `url`; expect it stored as "unknown".
async fn expect_unknown(url: &str, timeout: Duration) {
    let router = app(state(url, timeout));
    let posted = tokio::time::timeout(
        Duration::from_secs(10),
        call(
            &router,
            post_json(r#"{"name": "ray", "message": "great talk"}"#),
        ),
    )
    .await
    .expect("POST must finish even when sentiment-service does not answer");
    assert_eq!(posted.0, StatusCode::CREATED, "{}", posted.1);
    assert_eq!(posted.1["sentiment"], "unknown");
    let (_, list) = call(&router, get("/messages")).await;
    assert_eq!(list, json!([posted.1]));
}

#[tokio::test]
async fn sentiment_service_down_stores_unknown() {
    // Bind then drop a listener: nothing listens on that port any more, so
    // connecting is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    expect_unknown(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2)).await;
}

#[tokio::test]
async fn sentiment_service_503_stores_unknown() {
    let url = serve(Router::new().route(
        "/sentiment",
        post(|| async { (StatusCode::SERVICE_UNAVAILABLE, "fault filter abort") }),
    ))
    .await;
    expect_unknown(&url, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn sentiment_service_that_never_answers_times_out_to_unknown() {
    let url =
        serve(Router::new().route("/sentiment", post(std::future::pending::<&'static str>))).await;
    let started = std::time::Instant::now();
    expect_unknown(&url, Duration::from_millis(200)).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn sentiment_service_garbage_answer_stores_unknown() {
    let url = serve(Router::new().route(
        "/sentiment",
        post(|| async { Json(json!({"sentiment": "<script>"})) }),
    ))
    .await;
    expect_unknown(&url, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn health_and_unknown_paths() {
    let router = app(state("http://127.0.0.1:9", Duration::from_secs(1)));
    assert_eq!(
        call(&router, get("/health")).await,
        (StatusCode::OK, json!("ok"))
    );
    let (status, body) = call(&router, get("/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("/nope"));
}

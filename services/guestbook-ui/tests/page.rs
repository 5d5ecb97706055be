//! guestbook-ui's page and form, driven with `app(state).oneshot(request)`.
//! The two backends are fakes served on 127.0.0.1:0 and reached directly
//! (the client is built with `.no_proxy()`, so a developer's HTTP_PROXY is
//! ignored); the URLs come in through `Config`, never the process env.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::{
    Json, Router,
    body::Body,
    extract::Path,
    http::{HeaderMap, Request, StatusCode, header},
    routing::get,
};
use guestbook_ui::{AppState, Config, app, percent_decode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

// === Fake backends ===

/// Headers (and, for posts, JSON bodies) a fake backend received.
type Seen = Arc<Mutex<Vec<(HeaderMap, Value)>>>;

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// A helloworld-service v2 answering "Hola {name}" from instance hw-fake-2.
async fn fake_helloworld(seen: Seen) -> String {
    serve(Router::new().route(
        "/hello/{name}",
        get(move |Path(name): Path<String>, headers: HeaderMap| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push((headers, Value::Null));
                Json(json!({"greeting": format!("Hola {name}"), "version": "v2", "hostname": "hw-fake-2"}))
            }
        }),
    ))
    .await
}

/// A guestbook-service with three messages; `POST /messages` answers
/// `post_status` (201 with the message, or an error body).
async fn fake_guestbook(seen: Seen, post_status: StatusCode) -> String {
    let seen_get = seen.clone();
    serve(Router::new().route(
        "/messages",
        get(move |headers: HeaderMap| {
            let seen = seen_get.clone();
            async move {
                seen.lock().unwrap().push((headers, Value::Null));
                Json(json!([
                    {"id": 3, "name": "mallory", "message": "<script>alert(1)</script>", "sentiment": "unknown", "timestamp": "2026-01-31T09:32:00.000Z"},
                    {"id": 2, "name": "ana", "message": "this demo is terrible", "sentiment": "negative", "timestamp": "2026-01-31T09:31:00.000Z"},
                    {"id": 1, "name": "ray", "message": "great talk", "sentiment": "positive", "timestamp": "2026-01-31T09:30:00.000Z"},
                ]))
            }
        })
        .post(move |headers: HeaderMap, Json(body): Json<Value>| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push((headers, body.clone()));
                match post_status {
                    StatusCode::CREATED => (post_status, Json(body)),
                    StatusCode::BAD_REQUEST => (post_status, Json(json!({"error": "message is empty", "field": "message"}))),
                    _ => (post_status, Json(json!("upstream connect error or disconnect/reset before headers"))),
                }
            }
        }),
    ))
    .await
}

/// A backend that accepts connections and never answers.
async fn silent_backend() -> String {
    serve(Router::new().fallback(std::future::pending::<()>)).await
}

/// A URL where nothing listens: bind a port, then let it go.
fn closed_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

fn state(version: &str, helloworld_url: &str, guestbook_url: &str, timeout: Duration) -> AppState {
    let config = Config {
        host: "127.0.0.1".into(),
        port: 0,
        version: version.into(),
        hostname: "ui-test-7f3c2".into(),
        helloworld_url: helloworld_url.into(),
        guestbook_url: guestbook_url.into(),
        backend_timeout: timeout,
    };
    AppState::new(
        config,
        reqwest::Client::builder().no_proxy().build().unwrap(),
    )
}

async fn page(router: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, String) {
    let response = router.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

fn get_page(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

const SECOND: Duration = Duration::from_secs(1);

// === The page ===

#[tokio::test]
async fn page_shows_greeting_messages_sentiment_and_own_footer() {
    let hw = fake_helloworld(Seen::default()).await;
    let gb = fake_guestbook(Seen::default(), StatusCode::CREATED).await;
    let router = app(state("v1", &hw, &gb, 3 * SECOND));

    let request = Request::get("/")
        .header(header::COOKIE, "name=Mary%20Ann")
        .body(Body::empty())
        .unwrap();
    let (status, headers, html) = page(&router, request).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    // The greeting for the cookie's name, and which instance answered.
    assert!(html.contains("Hola Mary Ann"), "{html}");
    assert!(html.contains("hw-fake-2"), "{html}");
    // Messages, newest first, each with its sentiment tag.
    let great = html.find("great talk").expect("message from ray");
    let terrible = html
        .find("this demo is terrible")
        .expect("message from ana");
    assert!(terrible < great, "newest first");
    assert!(html.contains(r#"class="tag positive""#) && html.contains(r#"class="tag negative""#));
    assert!(html.contains(r#"class="tag unknown""#));
    // The footer names this instance.
    assert!(
        html.contains("guestbook-ui <strong>v1</strong> on <strong>ui-test-7f3c2</strong>"),
        "{html}"
    );
    assert!(html.contains(r#"<body class="theme-v1">"#), "{html}");
}

#[tokio::test]
async fn default_name_is_world() {
    let hw = fake_helloworld(Seen::default()).await;
    let gb = fake_guestbook(Seen::default(), StatusCode::CREATED).await;
    let (_, _, html) = page(&app(state("v1", &hw, &gb, 3 * SECOND)), get_page("/")).await;
    assert!(html.contains("Hola world"), "{html}");
}

#[tokio::test]
async fn version_v2_has_the_green_look() {
    let hw = fake_helloworld(Seen::default()).await;
    let gb = fake_guestbook(Seen::default(), StatusCode::CREATED).await;
    let (status, _, html) = page(&app(state("v2", &hw, &gb, 3 * SECOND)), get_page("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains(r#"<body class="theme-v2">"#), "{html}");
    assert!(html.contains(r#"<span class="badge" title="guestbook-ui version">v2</span>"#));
    assert!(
        html.contains("body.theme-v2 { --accent: #2e7d32"),
        "the v2 theme is green"
    );
}

#[tokio::test]
async fn user_data_is_html_escaped() {
    let hw = fake_helloworld(Seen::default()).await;
    let gb = fake_guestbook(Seen::default(), StatusCode::CREATED).await;
    let router = app(state("v1", &hw, &gb, 3 * SECOND));
    // A message, a cookie name and an error parameter, all carrying markup.
    let request = Request::get("/?error=%3Cimg%20src%3Dx%20onerror%3Dalert(2)%3E")
        .header(header::COOKIE, "name=%3Cb%3Ebold%22%3C%2Fb%3E")
        .body(Body::empty())
        .unwrap();
    let (_, _, html) = page(&router, request).await;
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{html}"
    );
    assert!(!html.contains("<script>"), "{html}");
    assert!(
        html.contains("&lt;img src=x onerror=alert(2)&gt;") && !html.contains("<img"),
        "{html}"
    );
    assert!(
        html.contains(r#"value="&lt;b&gt;bold&quot;&lt;/b&gt;""#),
        "{html}"
    );
    assert!(!html.contains("<b>bold"), "{html}");
}

// === Failing backends ===

#[tokio::test]
async fn backend_answering_503_still_renders_and_says_so() {
    let hw = serve(Router::new().route(
        "/hello/{name}",
        get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "fault filter abort") }),
    ))
    .await;
    let gb = fake_guestbook(Seen::default(), StatusCode::CREATED).await;
    let (status, _, html) = page(&app(state("v1", &hw, &gb, 3 * SECOND)), get_page("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("helloworld-service answered 503: fault filter abort"),
        "{html}"
    );
    assert!(
        html.contains("great talk"),
        "the other backend still shows: {html}"
    );
}

#[tokio::test]
async fn slow_backend_times_out_with_a_message() {
    let hw = fake_helloworld(Seen::default()).await;
    let gb = silent_backend().await;
    let router = app(state("v1", &hw, &gb, Duration::from_millis(300)));
    let (status, _, html) = tokio::time::timeout(10 * SECOND, page(&router, get_page("/")))
        .await
        .expect("the page must render even when a backend never answers");
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("guestbook-service timed out after 300 ms"),
        "{html}"
    );
    assert!(
        html.contains("Hola world"),
        "the other backend still shows: {html}"
    );
}

#[tokio::test]
async fn unreachable_backend_is_named() {
    let hw = closed_url();
    let gb = fake_guestbook(Seen::default(), StatusCode::CREATED).await;
    let (status, _, html) = page(&app(state("v1", &hw, &gb, 3 * SECOND)), get_page("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("helloworld-service could not be reached"),
        "{html}"
    );
}

#[tokio::test]
async fn backends_are_fetched_concurrently() {
    // Each fake answers only once both requests have arrived. Fetched one
    // after the other, the first would wait forever and time out.
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let b = barrier.clone();
    let hw = serve(Router::new().route(
        "/hello/{name}",
        get(move || async move {
            b.wait().await;
            Json(json!({"greeting": "Hello world", "version": "v1", "hostname": "hw-1"}))
        }),
    ))
    .await;
    let gb = serve(Router::new().route(
        "/messages",
        get(move || async move {
            barrier.wait().await;
            Json(json!([]))
        }),
    ))
    .await;
    let (_, _, html) = page(&app(state("v1", &hw, &gb, 5 * SECOND)), get_page("/")).await;
    assert!(html.contains("Hello world"), "{html}");
    assert!(html.contains("No messages yet"), "{html}");
}

// === Trace headers ===

#[tokio::test]
async fn trace_headers_are_forwarded_to_both_backends() {
    let hw_seen = Seen::default();
    let gb_seen = Seen::default();
    let hw = fake_helloworld(hw_seen.clone()).await;
    let gb = fake_guestbook(gb_seen.clone(), StatusCode::CREATED).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let request = Request::get("/")
        .header("traceparent", traceparent)
        .header("x-request-id", "req-7")
        .header("x-b3-traceid", "4bf92f3577b34da6")
        .header("b3", "4bf92f3577b34da6-00f067aa0ba902b7-1")
        .header(header::COOKIE, "name=ray; session=secret")
        .body(Body::empty())
        .unwrap();
    page(&app(state("v1", &hw, &gb, 3 * SECOND)), request).await;

    for (service, seen) in [("helloworld", hw_seen), ("guestbook", gb_seen)] {
        let seen = seen.lock().unwrap();
        let headers = &seen
            .first()
            .unwrap_or_else(|| panic!("{service} was not called"))
            .0;
        assert_eq!(headers["traceparent"], traceparent, "{service}");
        assert_eq!(headers["x-request-id"], "req-7", "{service}");
        assert_eq!(headers["x-b3-traceid"], "4bf92f3577b34da6", "{service}");
        assert_eq!(
            headers["b3"], "4bf92f3577b34da6-00f067aa0ba902b7-1",
            "{service}"
        );
        assert!(
            headers.get(header::COOKIE).is_none(),
            "{service}: cookies stay at the UI"
        );
    }
}

// === POST /greet ===

fn greet_form(body: &'static str) -> Request<Body> {
    Request::post("/greet")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header("x-request-id", "req-greet")
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn greet_posts_the_message_and_redirects_home() {
    let seen = Seen::default();
    let gb = fake_guestbook(seen.clone(), StatusCode::CREATED).await;
    let router = app(state("v1", &closed_url(), &gb, 3 * SECOND));

    let (status, headers, _) =
        page(&router, greet_form("name=Mary+Ann&message=hi+%3Cthere%3E")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/");
    let cookie = headers[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.starts_with("name=Mary%20Ann;"), "{cookie}");

    let seen = seen.lock().unwrap();
    let (headers, body) = seen.last().expect("guestbook-service got the post");
    assert_eq!(body, &json!({"name": "Mary Ann", "message": "hi <there>"}));
    assert_eq!(headers["x-request-id"], "req-greet");
}

/// POST a message to a guestbook answering `status`; return the error the
/// redirect carries, decoded.
async fn greet_error(status: StatusCode) -> String {
    let gb = fake_guestbook(Seen::default(), status).await;
    let router = app(state("v1", &closed_url(), &gb, 3 * SECOND));
    let (status, headers, _) = page(&router, greet_form("name=ray&message=hello")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let location = headers[header::LOCATION].to_str().unwrap();
    let encoded = location
        .strip_prefix("/?error=")
        .unwrap_or_else(|| panic!("{location}"));
    percent_decode(encoded)
}

#[tokio::test]
async fn greet_failure_redirects_with_the_error_shown() {
    let error = greet_error(StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(
        error.starts_with("guestbook-service answered 503: "),
        "{error}"
    );

    // Following the redirect shows that error on the page.
    let hw = fake_helloworld(Seen::default()).await;
    let gb = fake_guestbook(Seen::default(), StatusCode::CREATED).await;
    let router = app(state("v1", &hw, &gb, 3 * SECOND));
    let uri = format!("/?error={}", guestbook_ui::percent_encode(&error));
    let (status, _, html) = page(&router, get_page(&uri)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("Your message was not saved.")
            && html.contains("guestbook-service answered 503"),
        "{html}"
    );
}

#[tokio::test]
async fn greet_validation_error_shows_guestbook_services_reason() {
    let error = greet_error(StatusCode::BAD_REQUEST).await;
    assert_eq!(error, "guestbook-service answered 400: message is empty");
}

#[tokio::test]
async fn greet_with_guestbook_down_redirects_with_the_error() {
    let router = app(state("v1", &closed_url(), &closed_url(), 3 * SECOND));
    let (status, headers, _) = page(&router, greet_form("name=ray&message=hello")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let location = percent_decode(headers[header::LOCATION].to_str().unwrap());
    assert!(
        location.contains("guestbook-service could not be reached"),
        "{location}"
    );
}

#[tokio::test]
async fn health_is_ok() {
    let router = app(state("v1", &closed_url(), &closed_url(), SECOND));
    let (status, _, body) = page(&router, get_page("/health")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
}

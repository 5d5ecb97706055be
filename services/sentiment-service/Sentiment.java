/*
 * sentiment-service: the Guestbook's sentiment classifier (Java, JDK only).
 *
 * Where it sits in the request path:
 *
 *     user -> gateway -> guestbook-ui -> guestbook-service -> [sidecar] -> sentiment-service (this file)
 *
 * guestbook-service calls `POST http://sentiment-service:8080/sentiment` with
 * {"text": "..."} before it stores a message, and stores the answer's
 * "sentiment" beside it; the UI shows it as a coloured tag. The classifier is
 * deliberately tiny (two word lists, score = positives - negatives): the point
 * of this service is to be a third language and a third hop in the mesh, not
 * to be good at sentiment analysis.
 *
 * Run it (Java 17+, single-file source launch, no build step):
 *
 *     java services/sentiment-service/Sentiment.java
 *     curl -s localhost:8080/sentiment -H 'content-type: application/json' -d '{"text":"I love this talk"}'
 *     # {"sentiment": "positive", "score": 1}
 *     curl -s localhost:8080/sentiment -H 'content-type: text/plain' -d 'what a terrible day'
 *
 *     java services/sentiment-service/Sentiment.java --self-test   # exit code 0 = all passed
 *
 * Environment (bad values stop the process at start with a message naming the
 * variable): HOST (bind address, default 0.0.0.0), PORT (default 8080; 0 picks
 * a free port), VERSION (default v1), HOSTNAME (instance name, like a pod name;
 * default: the OS hostname).
 *
 * This service calls no other service, so it has no trace headers to forward;
 * guestbook-service, which calls it, forwards them (and says why).
 */

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.function.Function;

public class Sentiment {

    // === Classifier ===

    /** Words that make a message more positive. Lower case; matched as whole words. */
    static final Set<String> POSITIVE = Set.of(
            "good", "great", "awesome", "amazing", "love", "loved", "lovely", "like", "liked",
            "nice", "happy", "excellent", "fantastic", "wonderful", "best", "cool", "fun",
            "beautiful", "thanks", "thank", "glad", "enjoy", "enjoyed", "perfect", "brilliant",
            "yay", "super", "helpful", "clear", "fast");

    /** Words that make a message more negative. */
    static final Set<String> NEGATIVE = Set.of(
            "bad", "terrible", "awful", "hate", "hated", "sad", "worst", "horrible", "boring",
            "ugly", "angry", "broken", "fail", "failed", "fails", "sucks", "poor", "annoying",
            "slow", "bug", "buggy", "wrong", "disappointing", "disappointed", "confusing", "meh");

    /** The classifier's answer: the label guestbook-service stores, and the raw score. */
    record Result(String sentiment, int score) {
        String toJson() {
            return "{\"sentiment\": " + Json.quote(sentiment) + ", \"score\": " + score + "}";
        }
    }

    /**
     * score = (positive words) - (negative words); its sign picks the label.
     * A shortcut on purpose: no negation ("not good" counts as positive), no
     * stemming. Words are runs of letters (apostrophes inside a word kept), so
     * "Great!" and "great" count the same.
     */
    static Result classify(String text) {
        int score = 0;
        for (String word : words(text)) {
            if (POSITIVE.contains(word)) {
                score++;
            } else if (NEGATIVE.contains(word)) {
                score--;
            }
        }
        String label = score > 0 ? "positive" : score < 0 ? "negative" : "neutral";
        return new Result(label, score);
    }

    static List<String> words(String text) {
        List<String> out = new ArrayList<>();
        StringBuilder word = new StringBuilder();
        for (int i = 0; i < text.length(); i++) {
            char c = text.charAt(i);
            boolean inWordApostrophe = c == '\'' && word.length() > 0
                    && i + 1 < text.length() && Character.isLetter(text.charAt(i + 1));
            if (Character.isLetter(c) || inWordApostrophe) {
                word.append(c);
            } else if (word.length() > 0) {
                out.add(word.toString().toLowerCase(Locale.ROOT));
                word.setLength(0);
            }
        }
        if (word.length() > 0) {
            out.add(word.toString().toLowerCase(Locale.ROOT));
        }
        return out;
    }

    // === Request body -> text ===

    /** A request we refuse with 400; the message says what to send instead. */
    static final class BadRequest extends Exception {
        BadRequest(String message) {
            super(message);
        }
    }

    /**
     * The text to classify. `text/plain` bodies are the text itself (handy with
     * curl); anything else must be a JSON object with a string field "text".
     * We parse JSON by hand because the JDK has no JSON library and this
     * service uses the JDK only.
     */
    static String textFromBody(String contentType, String body) throws BadRequest {
        String type = contentType == null ? "" : contentType.toLowerCase(Locale.ROOT);
        if (type.startsWith("text/plain")) {
            if (body.isBlank()) {
                throw new BadRequest("the body is empty; send the text to classify");
            }
            return body;
        }
        Object parsed;
        try {
            parsed = Json.parse(body);
        } catch (Json.ParseError e) {
            throw new BadRequest("the body is not valid JSON (" + e.getMessage()
                    + "); send {\"text\": \"...\"} or the raw text with content-type text/plain");
        }
        if (!(parsed instanceof Map<?, ?> object)) {
            throw new BadRequest("the body must be a JSON object like {\"text\": \"...\"}");
        }
        Object text = object.get("text");
        if (text == null) {
            throw new BadRequest("the JSON object has no \"text\" field; send {\"text\": \"...\"}");
        }
        if (!(text instanceof String s)) {
            throw new BadRequest("\"text\" must be a JSON string");
        }
        return s;
    }

    // === A small JSON reader and writer ===

    /**
     * Just enough JSON (RFC 8259) for this service: objects, arrays, strings
     * with every escape (including \\uXXXX surrogate pairs), numbers, true,
     * false, null. Objects become LinkedHashMap, arrays ArrayList, numbers
     * Double, and JSON null becomes Json.NULL (so a missing field, Java null,
     * differs from a field set to null).
     */
    static final class Json {
        static final Object NULL = new Object() {
            @Override
            public String toString() {
                return "null";
            }
        };

        static final class ParseError extends Exception {
            ParseError(String message, int at) {
                super(message + " at character " + at);
            }
        }

        private final String s;
        private int i;

        private Json(String s) {
            this.s = s;
        }

        static Object parse(String text) throws ParseError {
            Json p = new Json(text);
            p.skipSpace();
            Object value = p.value(0);
            p.skipSpace();
            if (p.i != p.s.length()) {
                throw new ParseError("unexpected text after the JSON value", p.i);
            }
            return value;
        }

        /** A JSON string literal for s, escaping what RFC 8259 requires. */
        static String quote(String s) {
            StringBuilder out = new StringBuilder(s.length() + 2).append('"');
            for (int k = 0; k < s.length(); k++) {
                char c = s.charAt(k);
                switch (c) {
                    case '"' -> out.append("\\\"");
                    case '\\' -> out.append("\\\\");
                    case '\n' -> out.append("\\n");
                    case '\r' -> out.append("\\r");
                    case '\t' -> out.append("\\t");
                    default -> {
                        if (c < 0x20) {
                            out.append(String.format("\\u%04x", (int) c));
                        } else {
                            out.append(c);
                        }
                    }
                }
            }
            return out.append('"').toString();
        }

        // Nesting limit: deeply nested input must not overflow the stack.
        private static final int MAX_DEPTH = 64;

        private Object value(int depth) throws ParseError {
            if (depth > MAX_DEPTH) {
                throw new ParseError("nested deeper than " + MAX_DEPTH, i);
            }
            if (i >= s.length()) {
                throw new ParseError("unexpected end of input", i);
            }
            char c = s.charAt(i);
            return switch (c) {
                case '{' -> object(depth);
                case '[' -> array(depth);
                case '"' -> string();
                case 't' -> literal("true", Boolean.TRUE);
                case 'f' -> literal("false", Boolean.FALSE);
                case 'n' -> literal("null", NULL);
                default -> {
                    if (c == '-' || (c >= '0' && c <= '9')) {
                        yield number();
                    }
                    throw new ParseError("unexpected character '" + c + "'", i);
                }
            };
        }

        private Map<String, Object> object(int depth) throws ParseError {
            Map<String, Object> out = new LinkedHashMap<>();
            i++; // '{'
            skipSpace();
            if (peek() == '}') {
                i++;
                return out;
            }
            while (true) {
                skipSpace();
                if (peek() != '"') {
                    throw new ParseError("expected a field name in double quotes", i);
                }
                String key = string();
                skipSpace();
                expect(':');
                skipSpace();
                out.put(key, value(depth + 1));
                skipSpace();
                char c = next("expected ',' or '}'");
                if (c == '}') {
                    return out;
                }
                if (c != ',') {
                    throw new ParseError("expected ',' or '}'", i - 1);
                }
            }
        }

        private List<Object> array(int depth) throws ParseError {
            List<Object> out = new ArrayList<>();
            i++; // '['
            skipSpace();
            if (peek() == ']') {
                i++;
                return out;
            }
            while (true) {
                skipSpace();
                out.add(value(depth + 1));
                skipSpace();
                char c = next("expected ',' or ']'");
                if (c == ']') {
                    return out;
                }
                if (c != ',') {
                    throw new ParseError("expected ',' or ']'", i - 1);
                }
            }
        }

        private String string() throws ParseError {
            int start = i;
            i++; // opening quote
            StringBuilder out = new StringBuilder();
            while (true) {
                if (i >= s.length()) {
                    throw new ParseError("unterminated string", start);
                }
                char c = s.charAt(i++);
                if (c == '"') {
                    return out.toString();
                }
                if (c < 0x20) {
                    throw new ParseError("control character in string (escape it)", i - 1);
                }
                if (c != '\\') {
                    out.append(c);
                    continue;
                }
                char e = next("unterminated escape");
                switch (e) {
                    case '"' -> out.append('"');
                    case '\\' -> out.append('\\');
                    case '/' -> out.append('/');
                    case 'b' -> out.append('\b');
                    case 'f' -> out.append('\f');
                    case 'n' -> out.append('\n');
                    case 'r' -> out.append('\r');
                    case 't' -> out.append('\t');
                    // \\uXXXX is one UTF-16 code unit; a character outside the
                    // BMP arrives as two escapes (a surrogate pair), which
                    // appending unit by unit reassembles in the Java string.
                    case 'u' -> out.append(hex4());
                    default -> throw new ParseError("unknown escape \\" + e, i - 2);
                }
            }
        }

        private char hex4() throws ParseError {
            if (i + 4 > s.length()) {
                throw new ParseError("\\u needs four hex digits", i);
            }
            int v = 0;
            for (int k = 0; k < 4; k++) {
                int d = Character.digit(s.charAt(i + k), 16);
                if (d < 0) {
                    throw new ParseError("\\u needs four hex digits", i);
                }
                v = v * 16 + d;
            }
            i += 4;
            return (char) v;
        }

        private Double number() throws ParseError {
            int start = i;
            if (peek() == '-') {
                i++;
            }
            if (peek() == '0') {
                i++;
            } else if (isDigit(peek())) {
                while (isDigit(peek())) {
                    i++;
                }
            } else {
                throw new ParseError("expected a digit", i);
            }
            if (peek() == '.') {
                i++;
                if (!isDigit(peek())) {
                    throw new ParseError("expected a digit after '.'", i);
                }
                while (isDigit(peek())) {
                    i++;
                }
            }
            if (peek() == 'e' || peek() == 'E') {
                i++;
                if (peek() == '+' || peek() == '-') {
                    i++;
                }
                if (!isDigit(peek())) {
                    throw new ParseError("expected a digit in the exponent", i);
                }
                while (isDigit(peek())) {
                    i++;
                }
            }
            return Double.parseDouble(s.substring(start, i));
        }

        private Object literal(String word, Object value) throws ParseError {
            if (!s.startsWith(word, i)) {
                throw new ParseError("expected " + word, i);
            }
            i += word.length();
            return value;
        }

        private void skipSpace() {
            while (i < s.length() && " \t\r\n".indexOf(s.charAt(i)) >= 0) {
                i++;
            }
        }

        /** The current character, or 0 at the end (0 never matches anything we test for). */
        private char peek() {
            return i < s.length() ? s.charAt(i) : 0;
        }

        private char next(String whatWasExpected) throws ParseError {
            if (i >= s.length()) {
                throw new ParseError("unexpected end of input, " + whatWasExpected, i);
            }
            return s.charAt(i++);
        }

        private void expect(char c) throws ParseError {
            if (peek() != c) {
                throw new ParseError("expected '" + c + "'", i);
            }
            i++;
        }

        private static boolean isDigit(char c) {
            return c >= '0' && c <= '9';
        }
    }

    // === Config ===

    record Config(String host, int port, String version, String hostname) {
        /**
         * Read the config through a lookup function (System::getenv in main, a
         * Map::get in the self-test), so parsing is testable without touching
         * the process environment. Throws IllegalArgumentException naming the
         * variable.
         */
        static Config from(Function<String, String> env) {
            String portText = orDefault(env.apply("PORT"), "8080");
            int port;
            try {
                port = Integer.parseInt(portText.trim());
            } catch (NumberFormatException e) {
                throw new IllegalArgumentException(
                        "PORT=\"" + portText + "\" is not a number; set PORT to a port like 8080");
            }
            if (port < 0 || port > 65535) {
                throw new IllegalArgumentException(
                        "PORT=" + port + " is out of range; set PORT between 0 and 65535");
            }
            return new Config(
                    orDefault(env.apply("HOST"), "0.0.0.0"),
                    port,
                    orDefault(env.apply("VERSION"), "v1"),
                    // Kubernetes sets HOSTNAME to the pod name, meshctl to the
                    // instance name; elsewhere the OS hostname is the best we have.
                    orDefault(env.apply("HOSTNAME"), osHostname()));
        }

        private static String orDefault(String value, String fallback) {
            return value == null || value.isBlank() ? fallback : value;
        }

        private static String osHostname() {
            try {
                return InetAddress.getLocalHost().getHostName();
            } catch (IOException e) {
                return "unknown-host";
            }
        }
    }

    // === HTTP server ===

    /** Bodies larger than this get 413: a guestbook message is at most 500 characters. */
    static final int MAX_BODY_BYTES = 64 * 1024;

    /** Bind and start the server; port 0 picks a free one (see getAddress()). */
    static HttpServer start(Config config) throws IOException {
        HttpServer server = HttpServer.create(new InetSocketAddress(config.host(), config.port()), 0);
        server.createContext("/", exchange -> {
            try (exchange) {
                handle(exchange, config);
            } catch (IOException e) {
                // The client went away mid-answer; nothing left to tell it.
                log(config, "I/O error answering " + exchange.getRequestURI() + ": " + e.getMessage());
            }
        });
        // HttpServer's default runs every request on one thread; a pool lets
        // requests from several callers (and the sidecar's probes) overlap.
        ExecutorService pool = Executors.newFixedThreadPool(8);
        server.setExecutor(pool);
        server.start();
        return server;
    }

    static void handle(HttpExchange ex, Config config) throws IOException {
        String method = ex.getRequestMethod();
        String path = ex.getRequestURI().getPath();
        int status;
        if (path.equals("/health")) {
            status = send(ex, 200, "text/plain; charset=utf-8", "ok");
        } else if (path.equals("/sentiment")) {
            if (!method.equals("POST")) {
                ex.getResponseHeaders().set("Allow", "POST");
                status = sendError(ex, 405, "use POST /sentiment with {\"text\": \"...\"}");
            } else {
                status = classifyRequest(ex);
            }
        } else {
            status = sendError(ex, 404, "no route for " + method + " " + path
                    + "; try POST /sentiment or GET /health");
        }
        log(config, method + " " + path + " -> " + status);
    }

    private static int classifyRequest(HttpExchange ex) throws IOException {
        byte[] body;
        try (InputStream in = ex.getRequestBody()) {
            body = in.readNBytes(MAX_BODY_BYTES + 1);
        }
        if (body.length > MAX_BODY_BYTES) {
            return sendError(ex, 413, "the body is larger than " + MAX_BODY_BYTES + " bytes");
        }
        String contentType = ex.getRequestHeaders().getFirst("Content-Type");
        try {
            String text = textFromBody(contentType, new String(body, StandardCharsets.UTF_8));
            return send(ex, 200, "application/json", classify(text).toJson());
        } catch (BadRequest e) {
            return sendError(ex, 400, e.getMessage());
        }
    }

    private static int sendError(HttpExchange ex, int status, String message) throws IOException {
        return send(ex, status, "application/json", "{\"error\": " + Json.quote(message) + "}");
    }

    private static int send(HttpExchange ex, int status, String contentType, String body) throws IOException {
        byte[] bytes = body.getBytes(StandardCharsets.UTF_8);
        ex.getResponseHeaders().set("Content-Type", contentType);
        ex.sendResponseHeaders(status, bytes.length);
        try (OutputStream out = ex.getResponseBody()) {
            out.write(bytes);
        }
        return status;
    }

    private static void log(Config config, String line) {
        System.err.println("sentiment-service " + config.version() + ": " + line);
    }

    // === main ===

    public static void main(String[] args) throws Exception {
        if (args.length == 1 && args[0].equals("--self-test")) {
            System.exit(SelfTest.run());
        }
        if (args.length > 0) {
            System.err.println("usage: java Sentiment.java [--self-test]; configure with HOST, PORT, VERSION, HOSTNAME");
            System.exit(2);
        }
        Config config;
        try {
            config = Config.from(System::getenv);
        } catch (IllegalArgumentException e) {
            System.err.println("sentiment-service: bad configuration: " + e.getMessage());
            System.exit(2);
            return;
        }
        HttpServer server;
        try {
            server = start(config);
        } catch (IOException e) {
            System.err.println("sentiment-service: cannot listen on " + config.host() + ":" + config.port()
                    + ": " + e.getMessage() + "; is another process using the port? set PORT to another one");
            System.exit(1);
            return;
        }
        System.err.println("sentiment-service " + config.version() + " listening on http://"
                + config.host() + ":" + server.getAddress().getPort() + " (hostname=" + config.hostname() + ")");
    }

    // === Self-test ===

    /**
     * `--self-test`: checks the classifier, the JSON reader and, through a real
     * server on 127.0.0.1:0, the HTTP answers. Prints one line per failure and
     * a closing "N passed, N failed" line; the exit code is 1 if any failed.
     */
    static final class SelfTest {
        private int passed;
        private int failed;

        private void check(String name, boolean ok, Object detail) {
            if (ok) {
                passed++;
            } else {
                failed++;
                System.out.println("FAIL " + name + ": " + detail);
            }
        }

        private void equal(String name, Object got, Object want) {
            check(name, want.equals(got), "got " + got + ", want " + want);
        }

        private void rejects(String name, String contentType, String body, String messagePart) {
            try {
                String text = textFromBody(contentType, body);
                check(name, false, "accepted, got text " + Json.quote(text));
            } catch (BadRequest e) {
                check(name, e.getMessage().contains(messagePart),
                        "message " + Json.quote(e.getMessage()) + " lacks " + Json.quote(messagePart));
            }
        }

        static int run() throws Exception {
            SelfTest t = new SelfTest();
            t.classifier();
            t.jsonBodies();
            t.config();
            t.http();
            System.out.println(t.passed + " passed, " + t.failed + " failed");
            return t.failed == 0 ? 0 : 1;
        }

        void classifier() {
            equal("positive", classify("I love this talk, it is great!"), new Result("positive", 2));
            equal("negative", classify("What a terrible, boring demo"), new Result("negative", -2));
            equal("mixed cancels out", classify("good but slow"), new Result("neutral", 0));
            equal("no list words", classify("The mesh routes requests"), new Result("neutral", 0));
            equal("empty", classify(""), new Result("neutral", 0));
            equal("case and punctuation", classify("GREAT!!!Awesome."), new Result("positive", 2));
            equal("whole words only", classify("goodness badge"), new Result("neutral", 0));
            equal("words", words("Don't panic -- it's FINE"), List.of("don't", "panic", "it's", "fine"));
            equal("result json", new Result("negative", -3).toJson(), "{\"sentiment\": \"negative\", \"score\": -3}");
        }

        void jsonBodies() throws Exception {
            String json = "application/json";
            equal("plain field", textFromBody(json, "{\"text\": \"hello\"}"), "hello");
            equal("no content type is JSON", textFromBody(null, "{\"text\":\"hi\"}"), "hi");
            equal("other fields ignored",
                    textFromBody(json, " {\"name\": \"ray\", \"n\": -1.5e3, \"ok\": [true, false, null, {}], \"text\": \"x\"} "), "x");
            equal("escapes", textFromBody(json, "{\"text\": \"a\\\"b\\\\c\\/d\\n\\t\\u00e9\"}"), "a\"b\\c/d\n\t\u00e9");
            equal("surrogate pair", textFromBody(json, "{\"text\": \"\\ud83d\\ude00 great\"}"), "\uD83D\uDE00 great");
            equal("raw UTF-8", textFromBody(json, "{\"text\": \"caf\u00e9 \u2764\"}"), "caf\u00e9 \u2764");
            equal("text/plain is raw", textFromBody("text/plain; charset=utf-8", "{not json}"), "{not json}");
            equal("quote round trip", Json.parse(Json.quote("q\"\\\n\u0001")), "q\"\\\n\u0001");
            rejects("missing text", json, "{\"name\": \"ray\"}", "no \"text\" field");
            rejects("text not a string", json, "{\"text\": 42}", "must be a JSON string");
            rejects("text null", json, "{\"text\": null}", "must be a JSON string");
            rejects("not an object", json, "[\"text\"]", "must be a JSON object");
            rejects("empty body", json, "", "not valid JSON");
            rejects("truncated", json, "{\"text\": \"abc", "unterminated string");
            rejects("trailing garbage", json, "{\"text\": \"a\"} x", "after the JSON value");
            rejects("bad escape", json, "{\"text\": \"\\q\"}", "unknown escape");
            rejects("short unicode escape", json, "{\"text\": \"\\u12\"}", "four hex digits");
            rejects("raw newline in string", json, "{\"text\": \"a\nb\"}", "control character");
            rejects("single quotes", json, "{'text': 'a'}", "field name");
            rejects("missing comma", json, "{\"a\": 1 \"text\": \"b\"}", "expected ','");
            rejects("bad number", json, "{\"n\": -, \"text\": \"b\"}", "expected a digit");
            rejects("too deep", json, "[".repeat(100) + "]".repeat(100), "nested deeper");
            rejects("empty plain text", "text/plain", "  ", "body is empty");
        }

        void config() {
            Config c = Config.from(Map.of("PORT", "9000", "VERSION", "v2", "HOSTNAME", "s-1")::get);
            equal("config read", c, new Config("0.0.0.0", 9000, "v2", "s-1"));
            Config d = Config.from(Map.<String, String>of()::get);
            equal("config defaults", d.port() + " " + d.version() + " " + d.host(), "8080 v1 0.0.0.0");
            for (String bad : List.of("http", "-1", "70000")) {
                try {
                    Config.from(Map.of("PORT", bad)::get);
                    check("bad PORT " + bad, false, "accepted");
                } catch (IllegalArgumentException e) {
                    check("bad PORT " + bad, e.getMessage().startsWith("PORT="), e.getMessage());
                }
            }
        }

        void http() throws Exception {
            HttpServer server = start(new Config("127.0.0.1", 0, "v1", "self-test"));
            try {
                String base = "http://127.0.0.1:" + server.getAddress().getPort();
                // NO_PROXY: talk to the server directly even if the shell has a
                // proxy configured; this checks the app alone.
                HttpClient client = HttpClient.newBuilder().proxy(HttpClient.Builder.NO_PROXY).build();
                HttpResponse<String> r = client.send(HttpRequest.newBuilder(URI.create(base + "/sentiment"))
                        .header("Content-Type", "application/json")
                        .POST(HttpRequest.BodyPublishers.ofString("{\"text\": \"great talk, thanks\"}")).build(),
                        HttpResponse.BodyHandlers.ofString());
                equal("POST /sentiment status", r.statusCode(), 200);
                equal("POST /sentiment body", r.body(), "{\"sentiment\": \"positive\", \"score\": 2}");
                equal("POST /sentiment content type", r.headers().firstValue("Content-Type").orElse(""), "application/json");

                r = client.send(HttpRequest.newBuilder(URI.create(base + "/sentiment"))
                        .header("Content-Type", "application/json")
                        .POST(HttpRequest.BodyPublishers.ofString("{\"name\": \"ray\"}")).build(),
                        HttpResponse.BodyHandlers.ofString());
                equal("no text -> 400", r.statusCode(), 400);
                check("400 body is a JSON error", r.body().startsWith("{\"error\": "), r.body());

                r = client.send(HttpRequest.newBuilder(URI.create(base + "/sentiment"))
                        .POST(HttpRequest.BodyPublishers.ofString("x".repeat(MAX_BODY_BYTES + 10))).build(),
                        HttpResponse.BodyHandlers.ofString());
                equal("huge body -> 413", r.statusCode(), 413);

                r = client.send(HttpRequest.newBuilder(URI.create(base + "/sentiment")).GET().build(),
                        HttpResponse.BodyHandlers.ofString());
                equal("GET /sentiment -> 405", r.statusCode(), 405);

                r = client.send(HttpRequest.newBuilder(URI.create(base + "/health")).GET().build(),
                        HttpResponse.BodyHandlers.ofString());
                equal("health", r.statusCode() + " " + r.body(), "200 ok");

                r = client.send(HttpRequest.newBuilder(URI.create(base + "/nope")).GET().build(),
                        HttpResponse.BodyHandlers.ofString());
                equal("unknown path -> 404", r.statusCode(), 404);
            } finally {
                server.stop(0);
                ((ExecutorService) server.getExecutor()).shutdownNow();
            }
        }
    }
}

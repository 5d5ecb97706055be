# sentiment-service image: the Java classifier, compiled at build time and run
# on a Java runtime cut down to the modules it uses.
#
#     docker build -f docker/sentiment-service.Dockerfile -t micromesh/sentiment-service:dev .
#
# `java Sentiment.java` (single-file launch) compiles in memory, which needs a
# whole JDK at run time. Instead the build stage compiles once with javac, asks
# jdeps which modules the classes use (java.base, java.net.http,
# jdk.httpserver) and has jlink assemble a runtime of just those (about 35 MB
# against 200+ MB for a full JRE). The final image is that runtime, the
# classes, and a small Debian base for glibc.
#
# Learners get public bases (amd64 and arm64). The offline path
# (scripts/build-offline-images.sh) builds this same file with
# `--build-arg JDK_IMAGE=micromesh/base-jdk:<tag>` and
# `--build-arg RUNTIME_IMAGE=micromesh/base-debian:<tag>`, Debian root
# filesystems it made with debootstrap, because nothing can be pulled there.

ARG JDK_IMAGE=eclipse-temurin:17-jdk
ARG RUNTIME_IMAGE=debian:bookworm-slim

# === build: classes and a trimmed Java runtime ===
FROM ${JDK_IMAGE} AS build
WORKDIR /src
COPY services/sentiment-service/Sentiment.java Sentiment.java
# --strip-java-debug-attributes rather than --strip-debug: the latter also
# strips native symbols with objcopy, which a JDK image need not have.
# The self-test at the end proves the trimmed runtime has every module the
# service needs before the image exists.
RUN set -eux; \
    javac --release 17 -d /out/app Sentiment.java; \
    modules="$(jdeps --print-module-deps --ignore-missing-deps /out/app/*.class)"; \
    jlink --add-modules "$modules" --strip-java-debug-attributes \
        --no-man-pages --no-header-files --compress=2 --output /out/java; \
    /out/java/bin/java -cp /out/app Sentiment --self-test

# === sentiment-service ===
FROM ${RUNTIME_IMAGE} AS sentiment-service
COPY --from=build /out/java /opt/java
COPY --from=build /out/app /app
# An unprivileged user by number (it needs no /etc/passwd entry); the same
# number in every micromesh image.
USER 10001:10001
EXPOSE 8080
# The serial collector: one small service, no need for G1's threads and heap
# regions; it keeps the container's memory small.
ENTRYPOINT ["/opt/java/bin/java", "-XX:+UseSerialGC", "-cp", "/app", "Sentiment"]

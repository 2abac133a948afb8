#!/usr/bin/env bash
# Install Temporal's time-skipping test server (the Java one the TypeScript SDK's
# TestWorkflowEnvironment.createTimeSkipping() drives) for test/session-timers.test.ts, from Maven
# Central: io.temporal:temporal-test-server and its dependencies are copied into
# $CACHE_DIR/temporal-test-server/lib, and $CACHE_DIR/bin/temporal-test-server runs
# `java -cp lib/* io.temporal.testserver.TestServer <port>`. The SDK would download a native build
# from temporal.download, which this machine cannot reach; Maven Central it can.
#
# Nothing is vendored: a helper pom with the one dependency is generated in
# $CACHE_DIR/build/temporal-test-server/ and `mvn dependency:copy-dependencies` resolves it.
#
# Idempotent: a stamp file records the version; when it is current the script exits at once.
#
# Environment:
#   STREAMSPACE_CACHE             cache root (default /var/cache/streamspace)
#   TEMPORAL_TEST_SERVER_VERSION  io.temporal:temporal-test-server version (default below)
#   FORCE=1                       reinstall even if the stamp is current
# Needs mvn and a Java >= 11 runtime (provision.sh test mode installs Debian's maven and
# default-jre-headless when they are missing).
set -euo pipefail

VERSION="${TEMPORAL_TEST_SERVER_VERSION:-1.31.0}"
CACHE_DIR="${STREAMSPACE_CACHE:-/var/cache/streamspace}"
BIN_DIR="$CACHE_DIR/bin"
HOME_DIR="$CACHE_DIR/temporal-test-server"
BUILD_DIR="$CACHE_DIR/build/temporal-test-server"
FORCE="${FORCE:-0}"
# The wrapper revision is part of the stamp: a changed wrapper is written again.
STAMP="io.temporal:temporal-test-server=$VERSION wrapper=2"
WRAPPER="$BIN_DIR/temporal-test-server"

if [[ "$FORCE" != 1 && -x "$WRAPPER" && -f "$HOME_DIR/.stamp" && "$(cat "$HOME_DIR/.stamp")" == "$STAMP" ]]; then
  echo "build-temporal-test-server: up to date ($VERSION) in $HOME_DIR"
  exit 0
fi

command -v mvn >/dev/null 2>&1 || { echo "build-temporal-test-server: mvn not found (apt-get install maven)" >&2; exit 1; }
command -v java >/dev/null 2>&1 || { echo "build-temporal-test-server: java not found (apt-get install default-jre-headless)" >&2; exit 1; }

mkdir -p "$BIN_DIR"
rm -rf "$BUILD_DIR" && mkdir -p "$BUILD_DIR"
echo "build-temporal-test-server: io.temporal:temporal-test-server $VERSION from Maven Central"
t0=$(date +%s)

cat >"$BUILD_DIR/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.streamspace.build</groupId>
  <artifactId>temporal-test-server</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>io.temporal</groupId>
      <artifactId>temporal-test-server</artifactId>
      <version>$VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF

# Into a fresh directory, then swapped in: a half-copied lib/ never serves a test.
(cd "$BUILD_DIR" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$BUILD_DIR/lib")
n=$(find "$BUILD_DIR/lib" -name '*.jar' | wc -l)
ls "$BUILD_DIR/lib"/temporal-test-server-*.jar >/dev/null 2>&1 || { echo "build-temporal-test-server: temporal-test-server jar missing after mvn" >&2; exit 1; }
rm -rf "$HOME_DIR.tmp" && mkdir -p "$HOME_DIR.tmp" && mv "$BUILD_DIR/lib" "$HOME_DIR.tmp/lib"
rm -rf "$HOME_DIR" && mv "$HOME_DIR.tmp" "$HOME_DIR"

cat >"$WRAPPER.tmp" <<EOF
#!/bin/sh
# Temporal's time-skipping test server $VERSION (scripts/build-temporal-test-server.sh). Usage: temporal-test-server <port>
# Quick start-up (the SDK gives the server 5 s to listen): C1 only, serial GC, the class-data archive.
exec java -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xshare:auto -cp "$HOME_DIR/lib/*" io.temporal.testserver.TestServer "\$@"
EOF
chmod +x "$WRAPPER.tmp" && mv -f "$WRAPPER.tmp" "$WRAPPER"
echo "$STAMP" >"$HOME_DIR/.stamp"
echo "build-temporal-test-server: $n jars in $(($(date +%s) - t0))s -> $WRAPPER"

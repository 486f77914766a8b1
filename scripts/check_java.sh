#!/usr/bin/env bash
# Spark needs Java 17 (or newer). Fail early with a message that says what to do.
if ! command -v java >/dev/null 2>&1; then
  echo "error: Java 17 is required for Spark but 'java' is not on PATH." >&2
  echo "       Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless" >&2
  exit 1
fi
version=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
if [ -z "$version" ] || [ "$version" -lt 17 ]; then
  echo "error: Java 17 or newer is required for Spark; found: $(java -version 2>&1 | head -1)" >&2
  echo "       Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless" >&2
  exit 1
fi

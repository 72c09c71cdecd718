#!/usr/bin/env bash
# Install the programs the tests use: Debian's source-extractor (SExtractor
# 2.25, the original pipeline's detector, for the peer test) and chromium +
# chromium-driver (the HTML report is clicked in a headless browser). Tests that need a
# program that is not on PATH are skipped with the reason; CI sets
# DESOMSPARK_REQUIRE_TOOLS=1 so that a failed install fails the run instead.
set -uo pipefail
need=()
command -v source-extractor >/dev/null 2>&1 || need+=(source-extractor)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${need[*]} (apt-get)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") >/tmp/desomspark-apt.log 2>&1 \
    || { echo "apt-get install ${need[*]} failed: see /tmp/desomspark-apt.log"; [ "${DESOMSPARK_REQUIRE_TOOLS:-0}" = 1 ] && exit 1; }
else
  echo "not root or no apt-get: ${need[*]} not installed; the tests that need it are skipped"
  [ "${DESOMSPARK_REQUIRE_TOOLS:-0}" = 1 ] && exit 1
fi
exit 0

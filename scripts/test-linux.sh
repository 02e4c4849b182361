#!/usr/bin/env bash
# The nested pass of make test: the Linux-guest tests of each package in
# its own L1 (go test -exec bin/godwit-nested), each package up to four
# attempts. The TCG-emulated L1 now and then corrupts a nested guest or
# crashes its own kernel (testvm/README.md, "What the TCG L1 does to
# nested guests"): a package that fails is run again on its own, and every
# failure is announced as FIRST-TRY-FAILURE, with a summary at the end, so
# that a retry never hides one.
# Usage: scripts/test-linux.sh NESTED PKG...
set -u
nested=$1; shift
go=${GO:-go}
failures=()
for pkg in "$@"; do
  ok=0
  for try in 1 2 3 4; do
    # A package's tests take 1-2 minutes in L1 (boot included); an L1
    # that hangs (it does, now and then, without a word on its console)
    # is stopped by the harness after 5, which prints L1's last console
    # lines, so that the attempts of each package still fit in CI's time.
    if GODWIT_NESTED_TIMEOUT=${GODWIT_NESTED_TIMEOUT:-5m} GODWIT_NESTED_MEM=${GODWIT_NESTED_MEM:-6144} \
      "$go" test -p 1 -count=1 -timeout 8m -exec "$nested" -run 'Linux' "$pkg"; then
      ok=1
      break
    fi
    msg="FIRST-TRY-FAILURE of the nested Linux-guest tests of $pkg (attempt $try of 4; read the failure above)"
    echo "make: $msg"
    failures+=("$msg")
  done
  if [ $ok = 0 ]; then
    echo "make: the nested Linux-guest tests of $pkg failed four times"
    printf 'make: %s\n' "${failures[@]}"
    exit 1
  fi
done
if [ ${#failures[@]} -gt 0 ]; then
  echo "make: the nested pass passed, after these failures (each one is in the log above):"
  printf 'make:   %s\n' "${failures[@]}"
else
  echo "make: the nested pass passed at the first try of every package"
fi

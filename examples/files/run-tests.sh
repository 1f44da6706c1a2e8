#!/bin/sh
# Example tests: checks a few things about the machine and writes a JUnit report to results/.
set -u
mkdir -p results
failures=0
check() {
    name=$1; shift
    if "$@" > /dev/null 2>&1; then
        echo "<testcase classname=\"example\" name=\"$name\"/>" >> results/cases.tmp
        echo "ok   $name"
    else
        echo "<testcase classname=\"example\" name=\"$name\"><failure message=\"$name failed\"/></testcase>" >> results/cases.tmp
        echo "FAIL $name"
        failures=$((failures + 1))
    fi
}
: > results/cases.tmp
check shell-works true
check has-tmp test -d /tmp
check level-set test -n "${TEST_LEVEL:-}"
{
    echo '<?xml version="1.0" encoding="UTF-8"?>'
    echo "<testsuite name=\"example\" tests=\"3\" failures=\"$failures\">"
    cat results/cases.tmp
    echo '</testsuite>'
} > results/junit.xml
rm -f results/cases.tmp
uname -a > results/system.log
exit 0

#!/bin/sh
echo "coverage is not supported by the offline remote_coverage_tools stub" >&2
exit 1

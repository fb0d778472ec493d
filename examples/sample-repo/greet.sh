#!/bin/sh
# Prints a greeting naming the machine it runs on.
echo "hello, ${1:-world}, from $(hostname)"

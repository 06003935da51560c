// covattn-compare: exact attention against the covariance readout and the
// bounded cache, speed and error side by side (docs/compare.md).
#include <cstdio>

#include "cli.h"

int main(int argc, char** argv) { return covattn_compare::CompareMain(argc, argv, stdout, stderr); }

# Cross-compiles covattn for 64-bit ARM Linux with Debian's cross toolchain
# (g++-aarch64-linux-gnu) and arm64 multiarch libraries (libhwy-dev:arm64).
# Tests run under qemu-user; QEMU_CPU picks the emulated CPU (for example
# cortex-a72 for NEON only, or max,sve-default-vector-length=32 for 256-bit
# SVE).
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
set(COVATTN_QEMU qemu-aarch64)
include(${CMAKE_CURRENT_LIST_DIR}/debian-cross.cmake)

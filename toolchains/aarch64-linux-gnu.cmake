# Cross-compiles covattn for 64-bit ARM Linux with Debian's cross toolchain
# (g++-aarch64-linux-gnu) and arm64 multiarch libraries (libhwy-dev:arm64).
# Tests run under qemu-user; QEMU_CPU picks the emulated CPU (for example
# cortex-a72 for NEON only, or max,sve256=on for 256-bit SVE).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)

# Debian installs arm64 packages under /usr with multiarch directories, so
# search /usr for libraries and packages but never for programs.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu /usr)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# -L /: run with the loader and libc of Debian's arm64 multiarch packages
# (libc6:arm64 comes with libhwy-dev:arm64), the same libc as the other arm64
# libraries. The cross toolchain's own copy (-L /usr/aarch64-linux-gnu,
# libc6-arm64-cross) hangs in pthread_create under qemu-user 7.2, so no test
# could start a thread.
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /)

# Cross-compiles covattn for 32-bit ARM Linux (ARMv7-A, hard float) with
# Debian's cross toolchain (g++-arm-linux-gnueabihf) and armhf multiarch
# libraries (libhwy-dev:armhf), for CPUs with NEON and VFPv4 (Cortex-A7,
# A15 and later): Highway 1.0.3 compiles its ARMv7 NEON target only as the
# baseline (it cannot detect NEON at run time on 32-bit ARM), so NEON is the
# baseline here, and __fp16 needs the IEEE format. The fallback target is
# compiled beside it and tested by restricting dispatch to it, as on every
# target. Tests run under qemu-user (QEMU_CPU=cortex-a15).
set(CMAKE_SYSTEM_PROCESSOR armv7l)
set(CMAKE_LIBRARY_ARCHITECTURE arm-linux-gnueabihf)
set(COVATTN_QEMU qemu-arm)
set(CMAKE_C_FLAGS_INIT "-mfpu=neon-vfpv4 -mfp16-format=ieee")
set(CMAKE_CXX_FLAGS_INIT "-mfpu=neon-vfpv4 -mfp16-format=ieee")
include(${CMAKE_CURRENT_LIST_DIR}/debian-cross.cmake)

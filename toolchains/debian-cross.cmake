# What the cross toolchain files share, for Debian's cross compilers and its
# multiarch packages. The including file sets CMAKE_SYSTEM_PROCESSOR,
# CMAKE_LIBRARY_ARCHITECTURE (the multiarch triplet, which names the
# compilers too) and COVATTN_QEMU (the qemu-user program that runs tests).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_C_COMPILER ${CMAKE_LIBRARY_ARCHITECTURE}-gcc)
set(CMAKE_CXX_COMPILER ${CMAKE_LIBRARY_ARCHITECTURE}-g++)

# Debian installs foreign-architecture packages under /usr with multiarch
# directories, so search /usr for libraries and packages but never for
# programs.
set(CMAKE_FIND_ROOT_PATH /usr/${CMAKE_LIBRARY_ARCHITECTURE} /usr)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# -L /: run with the loader and libc of Debian's multiarch packages (libc6:arm64
# or libc6:armhf comes with libhwy-dev of that architecture), the same libc as
# the other libraries of the architecture. The cross toolchain's own copy
# (-L /usr/aarch64-linux-gnu, libc6-arm64-cross) hangs in pthread_create
# under qemu-user 7.2, so no test could start a thread.
set(CMAKE_CROSSCOMPILING_EMULATOR ${COVATTN_QEMU} -L /)

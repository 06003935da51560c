/* COVATTN_API marks the public C entry points. The library is built with
 * hidden visibility, so only these symbols are exported from the shared
 * library. Define COVATTN_STATIC_DEFINE when linking the static library on
 * Windows. */
#ifndef COVATTN_EXPORT_H_
#define COVATTN_EXPORT_H_

#if defined(_WIN32) && !defined(COVATTN_STATIC_DEFINE)
#ifdef COVATTN_BUILDING
#define COVATTN_API __declspec(dllexport)
#else
#define COVATTN_API __declspec(dllimport)
#endif
#elif defined(__GNUC__)
#define COVATTN_API __attribute__((visibility("default")))
#else
#define COVATTN_API
#endif

#endif /* COVATTN_EXPORT_H_ */

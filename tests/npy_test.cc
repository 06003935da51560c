// The .npy reader of covattn-compare against hand-made files: every dtype it
// reads, every header spelling numpy produces, and every malformed file it
// must refuse with a message naming the file.
#include "npy.h"

#include <doctest/doctest.h>

#include <cmath>

#include "compare_test_util.h"

using namespace covattn_compare;
using namespace covattn_compare_test;

namespace {

struct Outcome {
  bool ok;
  NpyArray array;
  NpyError error;
};

Outcome Read(const std::string& path, bool bf16 = false) {
  Outcome o;
  NpyReadOptions options;
  options.uint16_as_bf16 = bf16;
  o.ok = ReadNpy(path, options, &o.array, &o.error);
  return o;
}

Outcome ReadBytesAsFile(const ScratchDir& dir, const std::string& bytes, bool bf16 = false) {
  const std::string path = dir.File("case.npy");
  WriteBytes(path, bytes);
  return Read(path, bf16);
}

// The refusal of a malformed file: the right problem, a message naming the
// file, and nothing left in the array.
void CheckRefused(const Outcome& o, NpyProblem problem, const std::string& path,
                  const std::string& words) {
  CHECK_FALSE(o.ok);
  CHECK(o.error.problem == problem);
  INFO("message: " << o.error.message);
  CHECK(o.error.message.rfind(path + ": ", 0) == 0);
  CHECK(o.error.message.find(words) != std::string::npos);
  CHECK(o.array.data.empty());
  CHECK(o.array.shape.empty());
}

}  // namespace

TEST_CASE("float32, float16, float64 and bfloat16 arrays read back exactly") {
  ScratchDir dir;
  const std::vector<float> values = {0.0f, -1.5f, 3.25f, 1e-3f, -65504.0f, 7.0f};

  Outcome o = ReadBytesAsFile(dir, NpyBytes(Dict("<f4", {2, 1, 3}), F32Data(values)));
  REQUIRE(o.ok);
  CHECK(o.array.shape == std::vector<size_t>{2, 1, 3});
  CHECK(o.array.descr == "<f4");
  CHECK(o.array.data == values);

  // binary16 bits of the same values (all exactly representable except 1e-3).
  const std::vector<uint16_t> f16 = {0x0000, 0xBE00, 0x4280, 0x1419, 0xFBFF, 0x4700};
  o = ReadBytesAsFile(dir, NpyBytes(Dict("<f2", {6}), U16Data(f16)));
  REQUIRE(o.ok);
  CHECK(o.array.data[1] == -1.5f);
  CHECK(o.array.data[2] == 3.25f);
  CHECK(std::fabs(o.array.data[3] - 1e-3f) < 1e-6f);
  CHECK(o.array.data[4] == -65504.0f);
  CHECK(o.array.data[5] == 7.0f);

  // bfloat16 as uint16 only with the flag.
  const std::vector<uint16_t> bf16 = {0x0000, 0xBFC0, 0x4050};
  const std::string bf16_file = NpyBytes(Dict("<u2", {3}), U16Data(bf16));
  o = ReadBytesAsFile(dir, bf16_file, /*bf16=*/true);
  REQUIRE(o.ok);
  CHECK(o.array.data == std::vector<float>{0.0f, -1.5f, 3.25f});
  CheckRefused(ReadBytesAsFile(dir, bf16_file), NpyProblem::kUnsupportedDtype, dir.File("case.npy"),
               "--bf16");

  std::string f64(16, '\0');
  const double d[2] = {0.5, -2.0};
  std::memcpy(&f64[0], d, 16);  // little-endian hosts only, like the library's targets
  o = ReadBytesAsFile(dir, NpyBytes(Dict("<f8", {2}), f64));
  REQUIRE(o.ok);
  CHECK(o.array.data == std::vector<float>{0.5f, -2.0f});
}

TEST_CASE("every header spelling numpy writes or accepts") {
  ScratchDir dir;
  const std::string data = F32Data({1, 2, 3, 4});
  const char* dicts[] = {
      "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }",  // numpy >= 1.x
      "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2)}",    // no trailing comma
      "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (2, 2)}",
      "{'shape': (2, 2), 'fortran_order': False, 'descr': '<f4'}",      // any key order
      "{'descr':'<f4','fortran_order':False,'shape':(2,2,)}",           // tight, trailing comma
      "{'descr': '=f4', 'fortran_order': False, 'shape': (2L, 2L), }",  // native order, py2 longs
  };
  for (const char* dict : dicts) {
    INFO(dict);
    const Outcome o = ReadBytesAsFile(dir, NpyBytes(dict, data));
    REQUIRE(o.ok);
    CHECK(o.array.shape == std::vector<size_t>{2, 2});
    CHECK(o.array.data == std::vector<float>{1, 2, 3, 4});
  }
  for (int major : {2, 3}) {
    const Outcome o = ReadBytesAsFile(dir, NpyBytes(Dict("<f4", {4}), data, major));
    REQUIRE(o.ok);
    CHECK(o.array.data.size() == 4);
  }
  // A 0-d array holds one element; a 1-d Fortran-order array is C order too.
  Outcome o = ReadBytesAsFile(dir, NpyBytes(Dict("<f4", {}), F32Data({9})));
  REQUIRE(o.ok);
  CHECK(o.array.shape.empty());
  CHECK(o.array.data == std::vector<float>{9});
  o = ReadBytesAsFile(dir, NpyBytes(Dict("<f4", {4}, /*fortran=*/true), data));
  CHECK(o.ok);
  // An empty array is read (the caller decides whether it is usable).
  o = ReadBytesAsFile(dir, NpyBytes(Dict("<f4", {0, 3}), ""));
  REQUIRE(o.ok);
  CHECK(o.array.data.empty());
}

TEST_CASE("malformed files are refused with the file and the problem named") {
  ScratchDir dir;
  const std::string path = dir.File("case.npy");
  const std::string good_data = F32Data({1, 2, 3, 4, 5, 6});
  auto refused = [&](const std::string& bytes, NpyProblem problem, const std::string& words) {
    INFO("expecting: " << words);
    CheckRefused(ReadBytesAsFile(dir, bytes), problem, path, words);
  };

  SUBCASE("not .npy at all") {
    refused("", NpyProblem::kBadMagic, "not a .npy file");
    refused("hello world, this is text", NpyProblem::kBadMagic, "not a .npy file");
    refused(std::string("\x93NUMPZ\x01\x00", 8), NpyProblem::kBadMagic, "not a .npy file");
    refused("PK\x03\x04 a .npz archive", NpyProblem::kBadMagic, "not a .npy file");
  }
  SUBCASE("truncated before the header ends") {
    refused(std::string("\x93NUMPY", 6), NpyProblem::kTruncated, "format version");
    refused(std::string("\x93NUMPY\x01\x00\x76", 9), NpyProblem::kTruncated, "header length");
    const std::string full = NpyBytes(Dict("<f4", {2, 3}), good_data);
    refused(full.substr(0, 40), NpyProblem::kTruncated, "ends inside the header");
  }
  SUBCASE("unknown format versions") {
    std::string bytes = NpyBytes(Dict("<f4", {2, 3}), good_data);
    bytes[6] = 4;
    refused(bytes, NpyProblem::kBadVersion, "version 4.0");
    bytes[6] = 1, bytes[7] = 1;
    refused(bytes, NpyProblem::kBadVersion, "version 1.1");
    bytes[6] = 0, bytes[7] = 0;
    refused(bytes, NpyProblem::kBadVersion, "version 0.0");
  }
  SUBCASE("headers that are not the dictionary numpy writes") {
    const std::pair<const char*, const char*> cases[] = {
        {"descr: <f4", "does not start with '{'"},
        {"{'descr': '<f4', 'fortran_order': False}", "'shape' is missing"},
        {"{'fortran_order': False, 'shape': (2, 3)}", "'descr' is missing"},
        {"{'descr': '<f4', 'shape': (2, 3)}", "'fortran_order' is missing"},
        {"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}",
         "'descr' appears twice"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'extra': 1}",
         "cannot parse the value of 'extra'"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'extra': True}",
         "unexpected key 'extra'"},
        {"{'descr': '<f4', 'fortran_order': 0, 'shape': (2, 3)}", "value of 'fortran_order'"},
        {"{'descr': '<f4', 'fortran_order': 'no', 'shape': (2, 3)}", "not True or False"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3]}", "not a tuple of integers"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3)}", "value of 'shape'"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2.5, 3)}", "value of 'shape'"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999, 3)}",
         "value of 'shape'"},
        {"{'descr': '<f4' 'fortran_order': False, 'shape': (2, 3)}", "expected ',' or '}'"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)} trailing", "after the closing"},
        {"{'descr': '<f4, 'fortran_order': False, 'shape': (2, 3)}", "expected ',' or '}'"},
        {"{'descr: '<f4', 'fortran_order': False, 'shape': (2, 3)", "expected ':'"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3", "value of 'shape'"},
        {"", "does not start with '{'"},
    };
    for (const auto& c : cases) {
      INFO("header: " << c.first);
      CheckRefused(ReadBytesAsFile(dir, NpyBytes(c.first, good_data)), NpyProblem::kBadHeader, path,
                   c.second);
    }
    // A header length far beyond anything numpy writes.
    std::string bytes = NpyBytes(Dict("<f4", {2, 3}), good_data, 2);
    bytes[8] = 0, bytes[9] = 0, bytes[10] = 0, bytes[11] = 0x7F;
    refused(bytes, NpyProblem::kBadHeader, "absurd");
  }
  SUBCASE("element types it does not read") {
    for (const char* descr : {"<i4", "<i8", "|u1", "|b1", "<c8", "<f16", "|V4", "<U3", "f4"}) {
      INFO(descr);
      refused(NpyBytes(Dict(descr, {2, 3}), good_data), NpyProblem::kUnsupportedDtype, "dtype");
    }
    refused(
        NpyBytes("{'descr': [('a', '<f4'), ('b', '<f4')], 'fortran_order': False, 'shape': (3,)}",
                 good_data),
        NpyProblem::kUnsupportedDtype, "structured");
    refused(NpyBytes(Dict(">f4", {2, 3}), good_data), NpyProblem::kBigEndian, "big-endian");
    refused(NpyBytes(Dict(">f2", {3}), good_data.substr(0, 6)), NpyProblem::kBigEndian, "'<f2'");
    refused(NpyBytes(Dict("!f4", {2, 3}), good_data), NpyProblem::kUnsupportedDtype, "byte order");
  }
  SUBCASE("Fortran order") {
    refused(NpyBytes(Dict("<f4", {2, 3}, true), good_data), NpyProblem::kFortranOrder,
            "np.ascontiguousarray");
  }
  SUBCASE("data shorter or longer than the shape") {
    refused(NpyBytes(Dict("<f4", {2, 3}), good_data.substr(0, 23)), NpyProblem::kTruncated,
            "needs 24 bytes of data, the file holds 23");
    refused(NpyBytes(Dict("<f4", {2, 3}), ""), NpyProblem::kTruncated, "truncated");
    refused(NpyBytes(Dict("<f2", {2, 3}), good_data.substr(0, 11)), NpyProblem::kTruncated,
            "needs 12 bytes");
    refused(NpyBytes(Dict("<f4", {2, 3}), good_data + "xy"), NpyProblem::kTrailingData,
            "2 unexpected bytes");
  }
  SUBCASE("shapes too large to be real") {
    refused(NpyBytes(DictWithShape("<f4", "(2147483648, 2147483648, 8)"), good_data),
            NpyProblem::kTooLarge, "too large");
    refused(NpyBytes(DictWithShape("<f4", "(4611686018427387904, 4)"), good_data),
            NpyProblem::kTooLarge, "too large");
  }
}

TEST_CASE("files that cannot be read are reported, not crashed on") {
  ScratchDir dir;
  Outcome o = Read(dir.File("missing.npy"));
  CHECK_FALSE(o.ok);
  CHECK(o.error.problem == NpyProblem::kOpen);
  CHECK(o.error.message.find("missing.npy: cannot open") != std::string::npos);
  o = Read(dir.path().string());
  CHECK_FALSE(o.ok);
  CHECK(o.error.problem == NpyProblem::kOpen);
  CHECK(o.error.message.find("not a regular file") != std::string::npos);
}

TEST_CASE("shapes print as numpy prints them") {
  CHECK(ShapeString({}) == "()");
  CHECK(ShapeString({5}) == "(5,)");
  CHECK(ShapeString({3, 4, 5}) == "(3, 4, 5)");
}

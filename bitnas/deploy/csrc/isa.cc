// The ISA table and CPU feature detection (cpuid, XGETBV, Linux's AMX permission request).
#include "isa.h"

#include <sstream>

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define BITNAS_X86_CPUID 1
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif

namespace bitnas {

namespace {

const IsaRow kRows[] = {
    // name        required features                                    kernels             layout   rival
    {"reference", "", kernels_reference, {16384, 60, 8, 64}, nullptr},
    {"scalar", "", kernels_scalar, {16384, 60, 8, 32}, nullptr},
    {"avx2", "avx2,fma,popcnt,bmi2,os_avx", kernels_avx2, {16384, 60, 16, 32}, nullptr},
    {"avx512", "avx512f,avx512bw,avx512vl,avx512vpopcntdq,popcnt,bmi2,os_avx512", kernels_avx512,
     {24576, 96, 8, 64}, nullptr},
    // AMX int8 tiles for dense convs; packing, output transform and depthwise are the avx512 row's.
    {"amx", "avx512f,avx512bw,avx512vl,avx512vpopcntdq,popcnt,bmi2,os_avx512,amx_tile,amx_int8,os_amx,amx_granted",
     kernels_amx, {1 << 20, 256, 72, 64}, "avx512"},
};
constexpr int kCount = int(sizeof(kRows) / sizeof(kRows[0]));

#ifdef BITNAS_X86_CPUID
std::uint64_t xcr0() {
  std::uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (std::uint64_t(hi) << 32) | lo;
}

bool amx_granted() {
#if defined(__linux__)
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}
#endif

std::vector<std::pair<std::string, bool>> detect() {
  std::vector<std::pair<std::string, bool>> f;
  bool popcnt = false, fma = false, osxsave = false, avx2 = false, bmi2 = false, f512 = false, bw = false,
       vl = false, vpopcnt = false, bitalg = false, vnni = false, tile = false, int8 = false, bf16 = false;
  bool os_avx = false, os_avx512 = false, os_amx = false, granted = false;
#ifdef BITNAS_X86_CPUID
  unsigned a, b, c, d;
  if (__get_cpuid(1, &a, &b, &c, &d)) {
    popcnt = c & (1u << 23);
    fma = c & (1u << 12);
    osxsave = c & (1u << 27);
  }
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    avx2 = b & (1u << 5);
    bmi2 = b & (1u << 8);
    f512 = b & (1u << 16);
    bw = b & (1u << 30);
    vl = b & (1u << 31);
    vnni = c & (1u << 11);
    bitalg = c & (1u << 12);
    vpopcnt = c & (1u << 14);
    bf16 = d & (1u << 22);
    tile = d & (1u << 24);
    int8 = d & (1u << 25);
  }
  if (osxsave) {
    const std::uint64_t x = xcr0();
    os_avx = (x & 0x6) == 0x6;            // XMM and YMM state
    os_avx512 = (x & 0xe6) == 0xe6;       // and opmask, ZMM_Hi256, Hi16_ZMM
    os_amx = (x & 0x60000) == 0x60000;    // XTILECFG and XTILEDATA
  }
  if (tile && os_amx) granted = amx_granted();
#endif
  f = {{"popcnt", popcnt}, {"fma", fma}, {"avx2", avx2}, {"bmi2", bmi2}, {"avx512f", f512}, {"avx512bw", bw},
       {"avx512vl", vl}, {"avx512vpopcntdq", vpopcnt}, {"avx512bitalg", bitalg}, {"avx512vnni", vnni},
       {"amx_tile", tile}, {"amx_int8", int8}, {"amx_bf16", bf16}, {"os_avx", os_avx}, {"os_avx512", os_avx512},
       {"os_amx", os_amx}, {"amx_granted", granted}};
  return f;
}

std::vector<std::string> split(const char* list) {
  std::vector<std::string> out;
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

}  // namespace

std::vector<std::pair<std::string, bool>> cpu_features() {
  static const std::vector<std::pair<std::string, bool>> features = detect();
  return features;
}

bool cpu_has(const std::string& feature) {
  for (const auto& f : cpu_features())
    if (f.first == feature) return f.second;
  return false;
}

int isa_count() { return kCount; }

const IsaRow& isa_row(int i) { return kRows[i]; }

int find_isa(const std::string& name) {
  for (int i = 0; i < kCount; ++i)
    if (name == kRows[i].name) return i;
  return -1;
}

bool isa_compiled(int i) { return kRows[i].kernels() != nullptr; }

std::string isa_missing(int i) {
  std::string out;
  for (const std::string& f : split(kRows[i].features))
    if (!cpu_has(f)) out += (out.empty() ? "" : ",") + f;
  return out;
}

bool isa_supported(int i) {
  static const std::vector<char> ok = [] {
    std::vector<char> v;
    for (int j = 0; j < kCount; ++j) v.push_back(isa_compiled(j) && isa_missing(j).empty());
    return v;
  }();
  return i >= 0 && i < kCount && ok[i];
}

int best_isa() {
  int best = 1;
  for (int i = 1; i < kCount; ++i)
    if (isa_supported(i)) best = i;
  return best;
}

}  // namespace bitnas

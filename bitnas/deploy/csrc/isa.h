// The ISA table: every instruction-set path of the engine is one row {name, required CPU
// features, kernel table, layout sizes}. Rows run from the plain reference to the fastest; the
// driver, the bindings and Python (`_engine.isas()`) all read this one table, so adding an ISA is
// one kernels_<isa>.cc exporting a Kernels table plus one row in isa.cc.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "engine.h"

namespace bitnas {

// Layout sizes a row's kernels need from the driver.
struct Layout {
  int tile_bytes;    // L1 budget of one dense tile's gathered activations
  int tile_max;      // most output pixels per dense tile
  int word_bytes;    // scratch bytes one gathered 64-bit word takes (16: the AVX2 nibble split; 72: AMX sign bytes)
  int channel_pad;   // depthwise sign-byte images and weights: channels rounded up to this
};

struct IsaRow {
  const char* name;
  const char* features;           // required CPU (and OS) features, comma-separated, as cpu_features() names them
  const Kernels* (*kernels)();    // nullptr when the row is not compiled for this architecture
  Layout layout;
  // The row whose dense kernels `pick` weighs against this row's, layer by layer, by measured
  // speed (the AMX row: the AVX-512 popcount kernels, which also serve all its other units);
  // nullptr for rows that always run their own.
  const char* rival;
};

int isa_count();
const IsaRow& isa_row(int i);
int find_isa(const std::string& name);  // -1 when no row has that name
bool isa_compiled(int i);
bool isa_supported(int i);              // compiled, and the CPU and the OS have every feature
std::string isa_missing(int i);         // the features this machine lacks, comma-separated
int best_isa();                         // the last (fastest) supported row after the reference

// CPU features from cpuid, and whether the OS saves the register state (XGETBV), in a fixed order.
// AMX: amx_tile/amx_int8/amx_bf16 from cpuid, os_amx from XCR0, amx_granted when Linux granted
// this process the tile data state (arch_prctl ARCH_REQ_XCOMP_PERM, requested once).
std::vector<std::pair<std::string, bool>> cpu_features();
bool cpu_has(const std::string& feature);

}  // namespace bitnas

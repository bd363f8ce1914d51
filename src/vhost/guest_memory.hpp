// A VM's memory as the vhost-user front-end shares it (SET_MEM_TABLE): up to kMaxRegions
// regions, each a file descriptor mapped here once, and the translations the virtqueues need:
// guest-physical addresses (descriptors) and the front-end's own virtual addresses (ring
// addresses) to pointers in this process. Nothing a guest writes is trusted: every translation
// checks that the whole range lies inside the table.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "common/unique_fd.hpp"
#include "interpart/result.hpp"

namespace interpart::vhost {

// One region as VHOST_USER_SET_MEM_TABLE describes it (the spec's VhostUserMemoryRegion).
struct MemoryRegionDesc {
  std::uint64_t guest_phys_addr;
  std::uint64_t memory_size;
  std::uint64_t userspace_addr;  // the front-end's virtual address of the region
  std::uint64_t mmap_offset;     // where the region starts in its file descriptor
};
static_assert(sizeof(MemoryRegionDesc) == 32, "vhost-user protocol layout");

class GuestMemory {
 public:
  static constexpr unsigned kMaxRegions = 8;  // VHOST_MEMORY_BASELINE_NREGIONS

  GuestMemory() = default;
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;
  ~GuestMemory();

  // Maps `n` regions, one descriptor each (taken over). An error leaves nothing mapped.
  static Result<std::unique_ptr<GuestMemory>> map(const MemoryRegionDesc* regions, unsigned n, std::vector<UniqueFd> fds);

  // Host pointer of [gpa, gpa + len) when it lies inside one region, else nullptr.
  std::byte* guest(std::uint64_t gpa, std::uint64_t len) const;
  // The same for the front-end's virtual addresses (vring addresses).
  std::byte* frontend(std::uint64_t uva, std::uint64_t len) const;
  // Appends the host spans of [gpa, gpa + len) to `out` (a range may cross regions); false
  // when a byte of it is outside the table or more than `max` spans would be needed.
  bool guest_spans(std::uint64_t gpa, std::uint64_t len, iovec* out, unsigned max, unsigned* n) const;

  unsigned regions() const { return static_cast<unsigned>(regions_.size()); }
  std::uint64_t bytes() const;

 private:
  struct Region {
    MemoryRegionDesc d;
    std::byte* host;  // the region's first byte here
    void* base;       // the mapping (from file offset 0)
    std::size_t length;
  };
  std::vector<Region> regions_;
};

}  // namespace interpart::vhost

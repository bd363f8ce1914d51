#include "vhost/guest_memory.hpp"

#include <sys/mman.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <string>

namespace interpart::vhost {

GuestMemory::~GuestMemory() {
  for (const Region& r : regions_) ::munmap(r.base, r.length);
}

Result<std::unique_ptr<GuestMemory>> GuestMemory::map(const MemoryRegionDesc* regions, unsigned n, std::vector<UniqueFd> fds) {
  if (n == 0 || n > kMaxRegions) return make_error(EINVAL, "memory table with " + std::to_string(n) + " regions (1-8)");
  if (fds.size() != n) return make_error(EINVAL, "memory table: " + std::to_string(n) + " regions, " + std::to_string(fds.size()) + " descriptors");
  auto mem = std::make_unique<GuestMemory>();
  for (unsigned i = 0; i < n; ++i) {
    const MemoryRegionDesc& d = regions[i];
    const std::string which = "memory region " + std::to_string(i);
    if (d.memory_size == 0 || d.guest_phys_addr + d.memory_size < d.guest_phys_addr || d.userspace_addr + d.memory_size < d.userspace_addr ||
        d.mmap_offset + d.memory_size < d.mmap_offset)
      return make_error(EINVAL, which + ": empty or wrapping range");
    struct stat st {};
    if (::fstat(fds[i].get(), &st) != 0) return make_error(errno, which + ": fstat");
    // A region past the end of its file would fault (SIGBUS) on first touch: refused here.
    if (S_ISREG(st.st_mode) && d.mmap_offset + d.memory_size > static_cast<std::uint64_t>(st.st_size))
      return make_error(EINVAL, which + ": past the end of its file (" + std::to_string(st.st_size) + " bytes)");
    const std::size_t length = d.mmap_offset + d.memory_size;
    void* base = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED, fds[i].get(), 0);
    if (base == MAP_FAILED) return make_error(errno, which + ": mmap of " + std::to_string(length) + " bytes");
    mem->regions_.push_back({d, static_cast<std::byte*>(base) + d.mmap_offset, base, length});
  }
  return mem;  // (the descriptors close here: the mappings keep the memory)
}

std::byte* GuestMemory::guest(std::uint64_t gpa, std::uint64_t len) const {
  for (const Region& r : regions_) {
    const std::uint64_t start = r.d.guest_phys_addr;
    if (gpa >= start && gpa - start < r.d.memory_size && len <= r.d.memory_size - (gpa - start)) return r.host + (gpa - start);
  }
  return nullptr;
}

std::byte* GuestMemory::frontend(std::uint64_t uva, std::uint64_t len) const {
  for (const Region& r : regions_) {
    const std::uint64_t start = r.d.userspace_addr;
    if (uva >= start && uva - start < r.d.memory_size && len <= r.d.memory_size - (uva - start)) return r.host + (uva - start);
  }
  return nullptr;
}

bool GuestMemory::guest_spans(std::uint64_t gpa, std::uint64_t len, iovec* out, unsigned max, unsigned* n) const {
  while (len > 0) {
    const Region* hit = nullptr;
    for (const Region& r : regions_)
      if (gpa >= r.d.guest_phys_addr && gpa - r.d.guest_phys_addr < r.d.memory_size) hit = &r;
    if (!hit || *n >= max) return false;
    const std::uint64_t off = gpa - hit->d.guest_phys_addr;
    const std::uint64_t take = std::min(len, hit->d.memory_size - off);
    out[(*n)++] = {hit->host + off, static_cast<std::size_t>(take)};
    gpa += take;
    len -= take;
  }
  return true;
}

std::uint64_t GuestMemory::bytes() const {
  std::uint64_t b = 0;
  for (const Region& r : regions_) b += r.d.memory_size;
  return b;
}

}  // namespace interpart::vhost

// A process partition's block I/O for the shell tests: attaches as IMAGE, opens DEVICE and
// moves raw bytes between it and stdin/stdout, so that a script can compare checksums with
// what a VM guest wrote or read.
//   blk_tool SOCKET IMAGE DEVICE read OFFSET LENGTH     device bytes to stdout
//   blk_tool SOCKET IMAGE DEVICE write OFFSET LENGTH    stdin to the device (LENGTH bytes)
//   blk_tool SOCKET IMAGE DEVICE churn OFFSET LENGTH SECONDS
//                                      writes and verifies its own pattern there until SECONDS pass
//                                      or SIGTERM; prints how many rounds it made
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "interpart/block.hpp"
#include "interpart/interpart.hpp"

using namespace interpart;
using namespace std::chrono_literals;

namespace {
volatile sig_atomic_t g_stop = 0;
}

int main(int argc, char** argv) {
  if (argc < 7) {
    std::fprintf(stderr, "usage: blk_tool SOCKET IMAGE DEVICE read|write|churn OFFSET LENGTH [SECONDS]\n");
    return 2;
  }
  const std::string op = argv[4];
  const std::uint64_t offset = std::strtoull(argv[5], nullptr, 0), length = std::strtoull(argv[6], nullptr, 0);
  auto p = Partition::attach(argv[2], {argv[1]});
  if (!p) return std::fprintf(stderr, "blk_tool: attach: %s\n", p.error().message().c_str()), 1;
  auto dev = p->block_device(argv[3]);
  if (!dev) return std::fprintf(stderr, "blk_tool: open: %s\n", dev.error().message().c_str()), 1;
  constexpr std::size_t kChunk = 256 * 1024;
  auto buf = dev->allocate(kChunk);
  if (!buf) return std::fprintf(stderr, "blk_tool: allocate: %s\n", buf.error().message().c_str()), 1;
  std::byte* b = buf->data.data();
  if (op == "read" || op == "write") {
    for (std::uint64_t done = 0; done < length;) {
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(kChunk, length - done));
      if (op == "write") {
        std::size_t got = 0;
        while (got < n) {
          const ssize_t r = ::read(0, b + got, n - got);
          if (r <= 0) return std::fprintf(stderr, "blk_tool: short input\n"), 1;
          got += static_cast<std::size_t>(r);
        }
        if (auto r = dev->write(offset + done, *buf, n, 0, 20s); !r) return std::fprintf(stderr, "blk_tool: write: %s\n", r.error().message().c_str()), 1;
      } else {
        if (auto r = dev->read(offset + done, *buf, n, 20s); !r) return std::fprintf(stderr, "blk_tool: read: %s\n", r.error().message().c_str()), 1;
        if (std::fwrite(b, 1, n, stdout) != n) return 1;
      }
      done += n;
    }
    return 0;
  }
  if (op == "churn" && argc >= 8) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(std::atoi(argv[7]));
    std::uint64_t rounds = 0;
    ::signal(SIGTERM, [](int) { g_stop = 1; });
    for (std::uint32_t seed = 1; !g_stop && std::chrono::steady_clock::now() < until; ++seed, ++rounds) {
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(kChunk, length));
      for (std::size_t i = 0; i < n; ++i) b[i] = static_cast<std::byte>(seed * 131 + i);
      if (!dev->write(offset, *buf, n, 0, 20s)) return std::fprintf(stderr, "blk_tool: churn write failed\n"), 1;
      std::memset(b, 0, n);
      if (!dev->read(offset, *buf, n, 20s)) return std::fprintf(stderr, "blk_tool: churn read failed\n"), 1;
      for (std::size_t i = 0; i < n; ++i)
        if (b[i] != static_cast<std::byte>(seed * 131 + i)) return std::fprintf(stderr, "blk_tool: churn: byte %zu of round %u wrong\n", i, seed), 1;
    }
    std::printf("churn rounds %llu\n", static_cast<unsigned long long>(rounds));
    return 0;
  }
  std::fprintf(stderr, "blk_tool: unknown operation %s\n", op.c_str());
  return 2;
}

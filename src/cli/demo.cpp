// `interpart demo`: brings up a fabric (the embedded default unless a file is given), runs two
// partitions as separate processes over its first queue, its largest queue and its first pipe,
// and prints what they measured, then the manager's counters.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <vector>

#include "blk/driver_process.hpp"
#include "cli/commands.hpp"
#include "cli/demo_block.hpp"
#include "cli/demo_vm.hpp"
#include "fabric/spawn.hpp"
#include "fabric/stat_client.hpp"
#include "interpart/interpart.hpp"
#include "ring/doorbell.hpp"

namespace interpart::cli {

namespace {

struct Plan {
  std::string client, server;  // images
  std::string small, bulk, pipe;
  std::size_t bulk_size = 0;
  double seconds = 1;
  std::string socket;
};

std::span<const std::byte> bytes(const std::vector<std::byte>& v, std::size_t n) { return {v.data(), n}; }

[[noreturn]] void die(const char* what, const Error& e) {
  std::fprintf(stderr, "demo: %s: %s\n", what, e.message().c_str());
  std::_Exit(1);
}

template <class T>
T must(Result<T> r, const char* what) {
  if (!r) die(what, r.error());
  return std::move(*r);
}

void check(Result<void> r, const char* what) {
  if (!r) die(what, r.error());
}

// The partition that answers: echoes pings, then swallows a stream, a bulk stream, a pipe.
int run_server(const Plan& plan) {
  auto p = must(Partition::attach(plan.server, {plan.socket}), "attach");
  auto q = must(p.queue(plan.small), "open queue");
  std::vector<std::byte> buf(std::max<std::size_t>(q.max_message(), 64));
  for (;;) {  // phase 1: echo
    std::size_t n = must(q.receive(buf), "receive ping");
    if (n && buf[0] == std::byte{'E'}) break;
    check(q.send(bytes(buf, n)), "echo");
  }
  for (;;) {  // phase 2: stream
    bool end = false;
    must(q.receive_batch(256, [&](std::span<const std::byte> m) { end = end || (!m.empty() && m[0] == std::byte{'E'}); }), "receive stream");
    if (end) break;
  }
  check(q.send(std::string_view("done")), "ack stream");
  if (!plan.bulk.empty()) {  // phase 3: bulk, zero-copy receive
    auto b = must(p.queue(plan.bulk), "open bulk queue");
    for (;;) {
      auto m = must(b.peek(), "peek bulk");
      const bool end = m.size() == 1;
      b.release();
      if (end) break;
    }
    check(q.send(std::string_view("done")), "ack bulk");
  }
  if (!plan.pipe.empty()) {  // phase 4: pipe until end of stream
    auto pp = must(p.pipe(plan.pipe), "open pipe");
    std::vector<std::byte> chunk(256 * 1024);
    while (must(pp.read(chunk), "read pipe") > 0) {
    }
  }
  return 0;
}

void row(const char* what, double secs, std::uint64_t msgs, std::uint64_t bytes, const char* lat) {
  std::printf("  %-34s %10.0f %10.2f %9.2f   %s\n", what, static_cast<double>(msgs) / secs, static_cast<double>(bytes) / secs / 1e9,
              secs, lat);
}

int run_client(const Plan& plan) {
  auto p = must(Partition::attach(plan.client, {plan.socket}), "attach");
  auto q = must(p.queue(plan.small), "open queue");
  std::vector<std::byte> msg(64, std::byte{'P'}), buf(std::max<std::size_t>(q.max_message(), 64));
  std::printf("\n  %-34s %10s %10s %9s   %s\n", "phase", "msgs/s", "GB/s", "seconds", "latency");

  // Phase 1: ping-pong round trips, 64 bytes.
  std::vector<std::int64_t> rtt;
  rtt.reserve(1 << 20);
  std::int64_t start = ring::monotonic_ns(), end = start + static_cast<std::int64_t>(plan.seconds * 1e9), now = start;
  while (now < end && rtt.size() < rtt.capacity()) {
    const std::int64_t t0 = ring::monotonic_ns();
    check(q.send(bytes(msg, 64)), "ping");
    must(q.receive(buf), "pong");
    now = ring::monotonic_ns();
    rtt.push_back(now - t0);
  }
  double secs = static_cast<double>(now - start) / 1e9;
  std::sort(rtt.begin(), rtt.end());
  char lat[128];
  std::snprintf(lat, sizeof lat, "one-way p50 %.2f us, p99 %.2f us", rtt[rtt.size() / 2] / 2e3, rtt[rtt.size() * 99 / 100] / 2e3);
  row("queue ping-pong, 64 B", secs, rtt.size() * 2, rtt.size() * 128, lat);
  check(q.send(std::string_view("E")), "end pings");

  // Phase 2: one-way stream, 64 bytes, batches of 32.
  std::vector<std::span<const std::byte>> batch(32, bytes(msg, 64));
  std::uint64_t sent = 0;
  start = ring::monotonic_ns();
  end = start + static_cast<std::int64_t>(plan.seconds * 1e9);
  do {
    for (int i = 0; i < 64; ++i) sent += must(q.send_batch(batch), "stream");
    now = ring::monotonic_ns();
  } while (now < end);
  check(q.send(std::string_view("E")), "end stream");
  must(q.receive(buf), "stream ack");
  now = ring::monotonic_ns();
  secs = static_cast<double>(now - start) / 1e9;
  row("queue stream, 64 B, batch 32", secs, sent, sent * 64, "-");

  if (!plan.bulk.empty()) {  // Phase 3: large messages, zero-copy loan
    auto b = must(p.queue(plan.bulk), "open bulk queue");
    std::vector<std::byte> src(plan.bulk_size, std::byte{7});
    sent = 0;
    start = ring::monotonic_ns();
    end = start + static_cast<std::int64_t>(plan.seconds * 1e9);
    do {
      Loan l = must(b.loan(plan.bulk_size), "loan");
      std::memcpy(l.data.data(), src.data(), plan.bulk_size);
      check(b.commit(l, plan.bulk_size), "commit");
      ++sent;
      now = ring::monotonic_ns();
    } while (now < end);
    check(b.send(std::string_view("E")), "end bulk");
    must(q.receive(buf), "bulk ack");
    now = ring::monotonic_ns();
    secs = static_cast<double>(now - start) / 1e9;
    char what[64];
    std::snprintf(what, sizeof what, "queue bulk, %zu KiB, loan", plan.bulk_size / 1024);
    row(what, secs, sent, sent * plan.bulk_size, "-");
  }
  if (!plan.pipe.empty()) {  // Phase 4: pipe stream
    auto pp = must(p.pipe(plan.pipe), "open pipe");
    std::vector<std::byte> chunk(64 * 1024, std::byte{1});
    std::uint64_t total = 0, writes = 0;
    start = ring::monotonic_ns();
    end = start + static_cast<std::int64_t>(plan.seconds * 1e9);
    do {
      total += must(pp.write_all(chunk), "write pipe");
      ++writes;
      now = ring::monotonic_ns();
    } while (now < end);
    check(pp.close(), "close pipe");
    secs = static_cast<double>(now - start) / 1e9;
    row("pipe stream, 64 KiB writes", secs, writes, total, "-");
  }
  std::fflush(stdout);
  return 0;
}

pid_t fork_run(int (*fn)(const Plan&), const Plan& plan) {
  std::fflush(stdout);
  pid_t pid = ::fork();
  if (pid == 0) std::_Exit(fn(plan));
  return pid;
}

// The I/O partition serves the first device; two of its clients run a verified workload on
// halves of it at the same time (with a VM partition: of its first three quarters, the guest
// having the last one).
int run_block_phase(const config::Fabric& f, const std::string& socket, double seconds, std::optional<VmDemo>& vm) {
  const config::Device& d = f.devices[0];
  if (d.clients.empty()) return 0;
  auto driver = blk::DriverProcess::start({f.images[d.image].name, socket, false});
  if (!driver) {
    std::fprintf(stderr, "demo: %s\n", driver.error().message().c_str());
    return 1;
  }
  std::printf("\nblock device %s (%s backend, %llu MiB) served by %s (driver pid %d); clients:", d.name.c_str(),
              d.backend == config::Backend::file ? "file" : d.backend == config::Backend::memory ? "memory" : "null",
              static_cast<unsigned long long>(d.size >> 20), f.images[d.image].name.c_str(), driver->pid());
  std::vector<BlockClientPlan> plans;
  const std::size_t n = std::min<std::size_t>(2, d.clients.size() - (vm ? 1 : 0));
  const std::uint64_t per = (vm ? d.size * 3 / 4 : d.size) / 4096 / n;
  for (std::size_t i = 0; i < n; ++i) {
    if (!d.clients[i].writable) continue;
    plans.push_back({f.images[d.clients[i].image].name, d.name, socket, i * per, per, seconds, 17 + i});
    std::printf(" %s (blocks %llu-%llu)", plans.back().image.c_str(), static_cast<unsigned long long>(i * per),
                static_cast<unsigned long long>((i + 1) * per - 1));
  }
  std::printf("\n  mixed 4 KiB random I/O, 70%% reads, queue depth %u, every read checked against the last write\n", d.depth);
  std::fflush(stdout);
  int rc = 0;
  if (vm && !start_vm(*vm, seconds)) {
    std::printf("  %s: the guest did not start its I/O\n", vm->image.c_str());
    rc = 1;
  }
  std::vector<pid_t> pids;
  for (const auto& bp : plans) {
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    if (pid == 0) std::_Exit(run_block_client(bp));
    pids.push_back(pid);
  }
  for (pid_t pid : pids) {
    int st = 0;
    ::waitpid(pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) rc = 1;
  }
  if (vm && !finish_vm(*vm)) rc = 1;
  if (driver->stop() != 0) rc = 1;
  return rc;
}

}  // namespace

int cmd_demo(const std::string& file, double seconds) {
  auto f = load_config(file);
  if (!f) return 1;
  Plan plan;
  plan.seconds = seconds;
  for (const auto& c : f->channels) {
    if (c.kind == config::ChannelKind::queue && plan.small.empty()) {
      plan.small = c.name;
      plan.client = f->images[c.images[0]].name;
      plan.server = f->images[c.images[1]].name;
    }
  }
  if (plan.small.empty()) {
    std::cerr << "demo: the fabric has no queue channel to run over\n";
    return 1;
  }
  for (const auto& c : f->channels) {
    const bool same_ends = f->images[c.images[0]].name == plan.client && f->images[c.images[1]].name == plan.server;
    if (!same_ends || c.name == plan.small) continue;
    if (c.kind == config::ChannelKind::queue && c.max_message >= 64 * 1024 && c.max_message > plan.bulk_size) {
      plan.bulk = c.name;
      plan.bulk_size = c.max_message;
    }
    if (c.kind == config::ChannelKind::pipe && plan.pipe.empty()) plan.pipe = c.name;
  }
  char dir[] = "/tmp/interpart-demo.XXXXXX";
  if (!::mkdtemp(dir)) return std::perror("mkdtemp"), 1;
  plan.socket = std::string(dir) + "/fabric.sock";
  // File devices live in the temporary directory, as sparse images.
  for (auto& d : f->devices)
    if (d.backend == config::Backend::file) d.path = std::string(dir) + "/" + d.name + ".img";
  // A VM partition too, where QEMU and a built guest are here.
  std::optional<VmDemo> vm;
  std::string no_vm;
  if (!f->devices.empty() && f->images.size() < config::kMaxImages) {
    vm = find_vm_demo(&no_vm);
    if (vm) add_vm_client(*f, *vm, dir);
  }
  int rc = 0;
  {
    auto m = fabric::ManagerProcess::start(*f, plan.socket);
    if (!m) {
      std::cerr << "demo: " << m.error().message() << '\n';
      ::rmdir(dir);
      return 1;
    }
    std::printf("fabric \"%s\" up: manager pid %d, socket %s\n", f->name.c_str(), m->pid(), plan.socket.c_str());
    std::printf("partitions: %s (client) and %s (server), separate processes; channels: %s%s%s%s%s\n", plan.client.c_str(),
                plan.server.c_str(), plan.small.c_str(), plan.bulk.empty() ? "" : ", ", plan.bulk.c_str(), plan.pipe.empty() ? "" : ", ",
                plan.pipe.c_str());
    const pid_t server = fork_run(run_server, plan);
    const pid_t client = fork_run(run_client, plan);
    for (pid_t pid : {client, server}) {
      int st = 0;
      ::waitpid(pid, &st, 0);
      if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) rc = 1;
    }
    if (rc == 0 && !f->devices.empty()) {
      if (!vm) std::printf("\n(no VM partition in this demo: %s)\n", no_vm.c_str());
      rc = run_block_phase(*f, plan.socket, seconds, vm);
    }
    if (auto s = fabric::fetch_stats(plan.socket)) std::printf("\ninterpart stat:\n%s", fabric::format_stats(*s).c_str());
    m->stop();
  }
  for (auto& d : f->devices)
    if (d.backend == config::Backend::file) ::unlink(d.path.c_str());
  if (vm) ::unlink(vm->socket.c_str());
  ::rmdir(dir);
  std::printf("\n%s\n", rc == 0 ? "demo finished: fabric down, nothing left behind" : "demo FAILED");
  return rc;
}

}  // namespace interpart::cli

#include "cli/demo_vm.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <vector>

#include "ring/doorbell.hpp"

namespace interpart::cli {

namespace {

bool executable(const std::string& p) { return ::access(p.c_str(), X_OK) == 0; }
bool readable(const std::string& p) { return ::access(p.c_str(), R_OK) == 0; }

// Reads console lines until one starts with `prefix` (returned) or `deadline_ns` passes.
std::string read_until(VmDemo& vm, const char* prefix, std::int64_t deadline_ns, std::string* seen) {
  static std::string pending;
  for (;;) {
    for (std::size_t nl; (nl = pending.find('\n')) != std::string::npos;) {
      std::string line = pending.substr(0, nl);
      pending.erase(0, nl + 1);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (seen) *seen += line + "\n";
      if (const auto at = line.find(prefix); at != std::string::npos) return line.substr(at);
    }
    const std::int64_t left_ms = (deadline_ns - ring::monotonic_ns()) / 1'000'000;
    if (left_ms <= 0) return {};
    pollfd p{vm.console, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(std::min<std::int64_t>(left_ms, 1000))) <= 0) continue;
    char buf[4096];
    const ssize_t n = ::read(vm.console, buf, sizeof buf);
    if (n <= 0) return {};
    pending.append(buf, static_cast<std::size_t>(n));
  }
}

}  // namespace

std::optional<VmDemo> find_vm_demo(std::string* why) {
  VmDemo vm;
  for (const char* p : {"/usr/bin/qemu-system-x86_64", "/usr/local/bin/qemu-system-x86_64"})
    if (executable(p)) vm.qemu = p;
  if (vm.qemu.empty()) return *why = "no qemu-system-x86_64 here", std::nullopt;
  // INTERPART_GUEST, else the source tree's .deps/guest next to this build.
  if (const char* g = std::getenv("INTERPART_GUEST")) vm.guest = g;
  else {
    char exe[4096] = {};
    const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
    std::string dir = n > 0 ? std::string(exe, static_cast<std::size_t>(n)) : "";
    dir = dir.substr(0, dir.rfind('/'));
    vm.guest = dir.substr(0, dir.rfind('/')) + "/.deps/guest";
  }
  if (!readable(vm.guest + "/vmlinuz") || !readable(vm.guest + "/initrd.img") || !readable(vm.guest + "/demo"))
    return *why = "no guest built at " + vm.guest + " (scripts/guest builds it; INTERPART_GUEST names another)", std::nullopt;
  return vm;
}

void add_vm_client(config::Fabric& f, VmDemo& vm, const std::string& dir) {
  config::Image img;
  img.name = "vm";
  for (const auto& i : f.images) img.id = std::max(img.id, i.id + 1);
  img.uid = ::geteuid();
  img.gid = ::getegid();
  img.vm = true;
  f.images.push_back(img);
  vm.image = img.name;
  vm.socket = dir + "/vm.sock";
  config::Device& d = f.devices[0];
  config::DeviceClient c;
  c.image = static_cast<std::uint32_t>(f.images.size() - 1);
  c.writable = true;
  c.vhost_user = vm.socket;
  d.clients.push_back(c);
  vm.offset_mib = d.size * 3 / 4 >> 20;
  vm.mib = std::max<std::uint64_t>(1, (d.size >> 20) - vm.offset_mib);
}

bool start_vm(VmDemo& vm, double seconds) {
  std::string accel = "tcg";
  if (std::ifstream a(vm.guest + "/accel"); a) a >> accel;
  const std::string append = "console=ttyS0 panic=-1 quiet interpart.demo=" + std::to_string(std::max(2, static_cast<int>(seconds + 0.5))) + "," +
                             std::to_string(vm.offset_mib) + "," + std::to_string(std::min<std::uint64_t>(vm.mib, 64));
  const std::vector<std::string> args = {vm.qemu, "-accel", accel, "-m", "256", "-smp", "2", "-nodefaults", "-no-reboot", "-display", "none",
                                         "-serial", "stdio", "-object", "memory-backend-memfd,id=mem,size=256M,share=on",
                                         "-numa", "node,memdev=mem", "-kernel", vm.guest + "/vmlinuz", "-initrd", vm.guest + "/initrd.img",
                                         "-append", append, "-chardev", "socket,id=disk,path=" + vm.socket,
                                         "-device", "vhost-user-blk-pci,chardev=disk"};
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) return false;
  std::fflush(nullptr);
  vm.pid = ::fork();
  if (vm.pid == 0) {
    ::dup2(pipefd[1], 1);
    ::dup2(pipefd[1], 2);
    ::setsid();
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(vm.qemu.c_str(), argv.data());
    std::_Exit(127);
  }
  ::close(pipefd[1]);
  vm.console = pipefd[0];
  if (vm.pid < 0) return false;
  std::printf("  %s: a QEMU guest (%s, Debian's kernel) on %s, blocks from %llu MiB; booting...\n", vm.image.c_str(), accel.c_str(),
              vm.socket.c_str(), static_cast<unsigned long long>(vm.offset_mib));
  std::fflush(stdout);
  std::string seen;
  return !read_until(vm, "DEMO-IO-START", ring::monotonic_ns() + 90'000'000'000, &seen).empty();
}

bool finish_vm(VmDemo& vm) {
  std::string seen;
  const std::string line = read_until(vm, "DEMO-RESULT", ring::monotonic_ns() + 90'000'000'000, &seen);
  unsigned long long rounds = 0, errors = 1, secs = 0;
  const bool parsed = std::sscanf(line.c_str(), "DEMO-RESULT rounds %llu errors %llu seconds %llu", &rounds, &errors, &secs) == 3;
  if (vm.pid > 0) {
    int st = 0;
    for (int i = 0; i < 300 && ::waitpid(vm.pid, &st, WNOHANG) == 0; ++i) ::usleep(100'000);
    if (::waitpid(vm.pid, &st, WNOHANG) == 0) {
      ::kill(-vm.pid, SIGKILL);
      ::waitpid(vm.pid, &st, 0);
    }
  }
  ::close(vm.console);
  if (!parsed) {
    std::printf("  %s: the guest gave no result; its console:\n%s", vm.image.c_str(), seen.c_str());
    return false;
  }
  std::printf("  %s: %llu write+read rounds of 256 KiB (O_DIRECT) in %llu s, every read compared: %llu wrong\n", vm.image.c_str(), rounds,
              secs, errors);
  return errors == 0 && rounds > 0;
}

}  // namespace interpart::cli

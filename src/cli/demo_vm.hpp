// The VM partition of `interpart demo`, where QEMU and a guest (scripts/guest) are present: a
// short guest run on the demo's block device over vhost-user-blk, beside its process clients.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <sys/types.h>

#include "config/config.hpp"

namespace interpart::cli {

struct VmDemo {
  std::string qemu, guest;   // the QEMU binary; the guest's directory (vmlinuz, initrd.img, accel)
  std::string image, socket; // the VM image added to the config, its vhost-user socket
  std::uint64_t offset_mib = 0, mib = 0;  // its region of the device
  pid_t pid = -1;
  int console = -1;          // the guest's serial console (read end)
};

// QEMU and a built guest, or nothing (the demo says why it shows no VM).
std::optional<VmDemo> find_vm_demo(std::string* why);
// Adds the VM image as a client of the first device, its socket in `dir`; its region is the
// device's last quarter.
void add_vm_client(config::Fabric& f, VmDemo& vm, const std::string& dir);
// Boots the guest; returns once its I/O has started (false: it did not, within a minute).
bool start_vm(VmDemo& vm, double seconds);
// Waits for the guest's result and prints it; false when its I/O failed or it never finished.
bool finish_vm(VmDemo& vm);

}  // namespace interpart::cli

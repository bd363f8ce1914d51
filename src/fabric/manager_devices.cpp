// The fabric manager's block devices: a client opens a fresh attachment generation, an I/O
// partition serves the device and opens its clients' attachments.

#include "fabric/manager_impl.hpp"

namespace interpart::fabric {

void Manager::Impl::reply_device(Conn& c, const wire::DeviceReply& rep, const std::vector<int>& fds) {
  if (int r = wire::send_message(c.sock.get(), &rep, sizeof rep, fds.data(), fds.size()); r < 0)
    IP_LOG_WARN("device reply to pid %d failed: %s", c.pid, std::strerror(-r));
}

Result<void> Manager::Impl::recreate_attachment(std::uint32_t att, std::uint32_t generation) {
  const table::AttachmentEntry& a = ctl.attachment(att);
  const table::DeviceEntry& d = ctl.device(a.device);
  AttachmentInstance fresh;
  auto area = make_area("interpart-blk-" + table::entry_name(d.name) + "-" + table::entry_name(ctl.image(a.client).name), a.segment_bytes);
  if (!area) return area.error();
  blk::AttachmentHeader hdr{};
  hdr.magic = blk::kAttachmentMagic;
  hdr.version = blk::kAttachmentVersion;
  hdr.features = blk::kFeatureFlush | blk::kFeatureDiscard | blk::kFeatureWriteZeroes | blk::kFeatureFua |
                 ((a.flags & table::kAttachWritable) ? 0u : static_cast<std::uint32_t>(blk::kFeatureReadOnly));
  hdr.capacity = d.capacity;
  hdr.block_size = d.block_size;
  hdr.queues = d.queues;
  hdr.depth = d.depth;
  hdr.generation = generation;
  hdr.data_offset = blk::data_offset(d.queues, d.depth);
  hdr.data_bytes = d.data_bytes;
  std::memcpy(hdr.device, d.name, sizeof hdr.device);
  std::memcpy(area->map.data(), &hdr, sizeof hdr);
  for (std::uint32_t q = 0; q < d.queues; ++q) {
    fresh.client_bell.emplace_back(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    fresh.driver_bell.emplace_back(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (!fresh.client_bell.back() || !fresh.driver_bell.back()) return make_error(errno, "eventfd");
  }
  fresh.seg = std::move(area->fd);
  fresh.map = std::move(area->map);
  fresh.live = true;
  // The previous generation's holders keep their own descriptors until they let go.
  for (auto& b : attachments[att].driver_bell) ring::ring_doorbell(b.get());
  attachments[att] = std::move(fresh);
  return {};
}

void Manager::Impl::handle_open_device(Conn& c, const wire::DeviceRequest& req) {
  const std::string name(req.name, strnlen(req.name, sizeof req.name));
  const int dev = ctl.find_device(name);
  if (dev < 0) return reply_status(c, -ENOENT, "no device \"" + name + "\" in fabric " + fabric.name);
  const int att = ctl.find_attachment(static_cast<std::uint32_t>(dev), static_cast<std::uint32_t>(c.image));
  if (att < 0) return reply_status(c, -EACCES, "image " + image_name(c.image) + " is not a client of device " + name);
  const auto uatt = static_cast<std::uint32_t>(att);
  if (ctl.attachment(uatt).flags & table::kAttachVm)
    return reply_status(c, -EACCES, "image " + image_name(c.image) + " is a VM: its VMM reaches device " + name + " over vhost-user at " +
                                        vhost_sockets[uatt].path);
  table::AttachmentState st = ctl.attachment_state(uatt);
  if (st.client == table::SideState::open)
    return reply_status(c, -EBUSY, "device " + name + " is already open by " + image_name(c.image) + " (pid " +
                                       std::to_string(ctl.attachment(uatt).client_pid.load()) + ")");
  // Every client open is a fresh generation: nothing the previous client left is trusted.
  st.generation += 1;
  if (auto r = recreate_attachment(uatt, st.generation); !r) return reply_status(c, -r.error().code, r.error().message());
  st.client = table::SideState::open;
  if (st.driver == table::SideState::open) st.driver = table::SideState::free;  // the driver must reopen this generation
  ctl.attachment(uatt).client_pid.store(static_cast<std::uint32_t>(c.pid), std::memory_order_relaxed);
  set_attachment_state(uatt, st);
  c.client_of.emplace_back(uatt, st.generation);
  ring_device(static_cast<std::uint32_t>(dev));

  const table::DeviceEntry& d = ctl.device(static_cast<std::uint32_t>(dev));
  AttachmentInstance& inst = attachments[uatt];
  wire::DeviceReply rep{};
  rep.h = wire::header(wire::kDeviceReply, sizeof rep);
  rep.device = static_cast<std::uint32_t>(dev);
  rep.attachment = uatt;
  rep.generation = st.generation;
  rep.segment_bytes = ctl.attachment(uatt).segment_bytes;
  rep.queues = d.queues;
  std::vector<int> fds{inst.seg.get()};
  for (std::uint32_t q = 0; q < d.queues; ++q) {
    fds.push_back(inst.client_bell[q].get());
    fds.push_back(inst.driver_bell[q].get());
  }
  reply_device(c, rep, fds);
  IP_LOG_INFO("device %s opened by %s (pid %d), generation %u", name.c_str(), image_name(c.image).c_str(), c.pid, st.generation);
}

// A client gone or done: the driver finishes or cancels its I/O and stops serving that generation.
void Manager::Impl::release_client(std::uint32_t att, std::uint32_t generation, table::SideState how) {
  table::AttachmentState st = ctl.attachment_state(att);
  if (st.generation != generation || st.client != table::SideState::open) return;  // a newer client has it
  st.client = how;
  set_attachment_state(att, st);
  ctl.attachment(att).client_pid.store(0, std::memory_order_relaxed);
  for (auto& b : attachments[att].driver_bell) ring::ring_doorbell(b.get());
  ring_device(ctl.attachment(att).device);
}

void Manager::Impl::handle_close_device(Conn& c, const wire::DeviceRequest& req) {
  auto it = std::find(c.client_of.begin(), c.client_of.end(), std::pair{req.index, req.generation});
  if (it == c.client_of.end()) return reply_status(c, 0, "not open (already closed)");
  c.client_of.erase(it);
  release_client(req.index, req.generation, table::SideState::closed);
  IP_LOG_INFO("device %s closed by %s (pid %d), generation %u",
              table::entry_name(ctl.device(ctl.attachment(req.index).device).name).c_str(), image_name(c.image).c_str(), c.pid,
              req.generation);
  reply_status(c, 0, "closed");
}

void Manager::Impl::handle_serve_device(Conn& c, const wire::DeviceRequest& req) {
  const std::string name(req.name, strnlen(req.name, sizeof req.name));
  const int dev = ctl.find_device(name);
  if (dev < 0) return reply_status(c, -ENOENT, "no device \"" + name + "\" in fabric " + fabric.name);
  const auto udev = static_cast<std::uint32_t>(dev);
  table::DeviceEntry& d = ctl.device(udev);
  if (d.io_image != static_cast<std::uint32_t>(c.image))
    return reply_status(c, -EACCES, "device " + name + " is served by image " + image_name(static_cast<int>(d.io_image)) + ", not " + image_name(c.image));
  if (devices[udev].conn >= 0) {
    // A driver killed a moment ago may not have been dropped yet (its pidfd's event still
    // waits in our epoll): look at it now, so that its restart is not refused.
    const auto it = conns.find(devices[udev].conn);
    if (it != conns.end()) {
      pollfd p[2] = {{it->second->sock.get(), POLLRDHUP, 0}, {it->second->pidfd ? it->second->pidfd.get() : -1, POLLIN, 0}};
      if (::poll(p, 2, 0) > 0 && ((p[0].revents & (POLLHUP | POLLRDHUP | POLLERR)) || (p[1].revents & POLLIN)))
        drop(devices[udev].conn, table::SideState::dead, "process exited");
    }
  }
  if (devices[udev].conn >= 0)
    return reply_status(c, -EBUSY, "device " + name + " is already served (pid " + std::to_string(d.driver_pid.load()) + ")");
  devices[udev].conn = c.sock.get();
  d.driver_pid.store(static_cast<std::uint32_t>(c.pid), std::memory_order_relaxed);
  d.driver_generation.fetch_add(1, std::memory_order_relaxed);
  c.serves.push_back(udev);
  wire::DeviceReply rep{};
  rep.h = wire::header(wire::kDeviceReply, sizeof rep);
  rep.device = udev;
  rep.queues = d.queues;
  reply_device(c, rep, {devices[udev].bell.get()});
  IP_LOG_INFO("device %s served by %s (pid %d)", name.c_str(), image_name(c.image).c_str(), c.pid);
}

// A driver opens an attachment of a device it serves: a process client's (the segment and the
// queues' bells), or a VM client's (wire type 26: the segment, for its counters, a fresh
// generation the first time; and the VM's vhost-user socket, which stays ours across drivers).
void Manager::Impl::handle_open_attachment(Conn& c, const wire::DeviceRequest& req) {
  const std::uint32_t att = req.index;
  const bool vm = req.h.type == wire::kOpenVmAttachment;
  if (att >= ctl.attachment_count()) return reply_status(c, -ENOENT, "no attachment " + std::to_string(att));
  table::AttachmentEntry& a = ctl.attachment(att);
  if (((a.flags & table::kAttachVm) != 0) != vm)
    return reply_status(c, -ENOENT, "attachment " + std::to_string(att) + (vm ? " is not a VM's" : " is a VM's (opened with type 26)"));
  if (std::find(c.serves.begin(), c.serves.end(), a.device) == c.serves.end())
    return reply_status(c, -EACCES, "this process does not serve the device of attachment " + std::to_string(att));
  AttachmentInstance& inst = attachments[att];
  table::AttachmentState st = ctl.attachment_state(att);
  if (vm && !inst.live) {
    st.generation += 1;
    if (auto r = recreate_attachment(att, st.generation); !r) return reply_status(c, -r.error().code, r.error().message());
    st.client = table::SideState::open;
  }
  if (!inst.live) return reply_status(c, -ENOENT, "attachment " + std::to_string(att) + " has no client yet");
  st.driver = table::SideState::open;
  set_attachment_state(att, st);
  a.driver_pid.store(static_cast<std::uint32_t>(c.pid), std::memory_order_relaxed);
  const table::DeviceEntry& d = ctl.device(a.device);
  wire::DeviceReply rep{};
  rep.h = wire::header(wire::kDeviceReply, sizeof rep);
  rep.device = a.device;
  rep.attachment = att;
  rep.generation = st.generation;
  rep.segment_bytes = a.segment_bytes;
  rep.queues = d.queues;
  std::vector<int> fds{inst.seg.get()};
  if (vm) fds.push_back(vhost_sockets[att].listener.get());
  for (std::uint32_t q = 0; q < d.queues && !vm; ++q) {
    fds.push_back(inst.driver_bell[q].get());
    fds.push_back(inst.client_bell[q].get());
  }
  reply_device(c, rep, fds);
}

Result<void> Manager::Impl::open_vhost_sockets() {
  vhost_sockets.resize(ctl.attachment_count());
  for (std::size_t d = 0; d < fabric.devices.size(); ++d) {
    for (const config::DeviceClient& cl : fabric.devices[d].clients) {
      if (cl.vhost_user.empty()) continue;
      const int att = ctl.find_attachment(static_cast<std::uint32_t>(d), cl.image);
      if (att < 0) continue;
      VhostSocket& v = vhost_sockets[static_cast<std::size_t>(att)];
      auto s = listen_on_path(cl.vhost_user, SOCK_STREAM, 0600, static_cast<gid_t>(-1), &v.inode);
      if (!s) return Error{s.code(), "vhost-user socket of " + image_name(static_cast<int>(cl.image)) + " for device " + fabric.devices[d].name + ": " + s.error().message()};
      // Only the VM's uid may connect (the driver checks SO_PEERCRED as well).
      const config::Image& img = fabric.images[cl.image];
      if (::chown(cl.vhost_user.c_str(), img.uid, img.gid) != 0 && img.uid != ::geteuid())
        return make_error(errno, "cannot give " + cl.vhost_user + " to uid " + std::to_string(img.uid) + " (the manager needs root for that)");
      v.listener = std::move(*s);
      v.path = cl.vhost_user;
      IP_LOG_INFO("device %s: vhost-user socket for VM %s at %s", fabric.devices[d].name.c_str(), img.name.c_str(), v.path.c_str());
    }
  }
  return {};
}

Manager::Manager(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Manager::~Manager() {
  if (!impl_) return;
  remove_socket_path(impl_->socket_path, impl_->socket_inode);
  for (const VhostSocket& v : impl_->vhost_sockets)
    if (!v.path.empty()) remove_socket_path(v.path, v.inode);
}

}  // namespace interpart::fabric

#include "table/control.hpp"

#include <time.h>
#include <unistd.h>

#include <algorithm>

#include <cstdio>
#include <cstring>
#include <map>
#include <new>
#include <sstream>

#include "blk/layout.hpp"
#include "ring/channel_layout.hpp"

namespace interpart::table {

namespace {

constexpr std::size_t kAlign = 128;

struct Offsets {
  std::size_t images, segments, channels, devices, attachments, listeners, total;
};

// Configured channels, then the stream slots.
std::size_t channel_rows(const config::Fabric& f) { return f.channels.size() + f.streams; }

std::size_t attachment_count(const config::Fabric& f) {
  std::size_t n = 0;
  for (const auto& d : f.devices) n += d.clients.size();
  return n;
}

std::size_t segment_rows(const config::Fabric& f) {
  std::size_t dedicated = 0;
  for (const auto& c : f.channels)
    if (!c.segment) ++dedicated;
  return 1 + f.segments.size() + dedicated + f.streams + attachment_count(f);
}

Offsets offsets_of(const config::Fabric& f) {
  Offsets o{};
  o.images = ring::align_up(sizeof(ControlHeader), kAlign);
  o.segments = ring::align_up(o.images + f.images.size() * sizeof(ImageEntry), kAlign);
  o.channels = ring::align_up(o.segments + segment_rows(f) * sizeof(SegmentEntry), kAlign);
  o.devices = ring::align_up(o.channels + channel_rows(f) * sizeof(ChannelEntry), kAlign);
  o.attachments = ring::align_up(o.devices + f.devices.size() * sizeof(DeviceEntry), kAlign);
  o.listeners = ring::align_up(o.attachments + attachment_count(f) * sizeof(AttachmentEntry), kAlign);
  o.total = ring::align_up(o.listeners + kMaxListeners * sizeof(ListenerEntry), ring::kLayoutPage);
  return o;
}

void copy_name(char (&dst)[32], std::string_view src) {
  std::memset(dst, 0, sizeof dst);
  std::memcpy(dst, src.data(), std::min(src.size(), sizeof dst - 1));
}

std::uint64_t ring_bytes_of(const config::Channel& c) {
  return c.kind == config::ChannelKind::queue ? ring::queue_ring_bytes(c.depth, c.max_message) : ring::pipe_ring_bytes(c.capacity);
}

// The segment row of a channel area that has a segment of its own (numbered after the channel).
void dedicated_segment(SegmentEntry& s, ChannelEntry& e, std::size_t channel, std::uint64_t images) {
  s = SegmentEntry{};
  s.number = kChannelSegmentBase + static_cast<std::uint32_t>(channel);
  s.flags = kSegChannel;
  s.size = e.area_bytes;
  s.owner = kNoImage;
  s.read_mask = s.write_mask = images;
  e.segment = s.number;
  e.offset = 0;
}

std::string human(std::uint64_t b) {
  char buf[32];
  if (b >= (1ull << 30) && b % (1ull << 30) == 0) std::snprintf(buf, sizeof buf, "%llu GiB", (unsigned long long)(b >> 30));
  else if (b >= (1ull << 20) && b % (1ull << 20) == 0) std::snprintf(buf, sizeof buf, "%llu MiB", (unsigned long long)(b >> 20));
  else if (b >= 1024 && b % 1024 == 0) std::snprintf(buf, sizeof buf, "%llu KiB", (unsigned long long)(b >> 10));
  else std::snprintf(buf, sizeof buf, "%llu B", (unsigned long long)b);
  return buf;
}

}  // namespace

std::size_t table_bytes(const config::Fabric& f) { return offsets_of(f).total; }

void build(const config::Fabric& f, std::byte* base, std::size_t size, std::uint32_t manager_pid) {
  const Offsets o = offsets_of(f);
  std::memset(base, 0, size);
  auto* h = new (base) ControlHeader{};
  h->magic = kControlMagic;
  h->version = kControlVersion;
  h->header_bytes = sizeof(ControlHeader);
  h->total_bytes = o.total;
  h->image_count = static_cast<std::uint32_t>(f.images.size());
  h->image_offset = static_cast<std::uint32_t>(o.images);
  h->segment_count = static_cast<std::uint32_t>(segment_rows(f));
  h->segment_offset = static_cast<std::uint32_t>(o.segments);
  h->channel_count = static_cast<std::uint32_t>(channel_rows(f));
  h->stream_first = static_cast<std::uint32_t>(f.channels.size());
  h->stream_count = f.streams;
  h->listener_count = kMaxListeners;
  h->listener_offset = static_cast<std::uint32_t>(o.listeners);
  h->channel_offset = static_cast<std::uint32_t>(o.channels);
  h->device_count = static_cast<std::uint32_t>(f.devices.size());
  h->device_offset = static_cast<std::uint32_t>(o.devices);
  h->attachment_count = static_cast<std::uint32_t>(attachment_count(f));
  h->attachment_offset = static_cast<std::uint32_t>(o.attachments);
  h->manager_pid = manager_pid;
  h->flags = f.allow_root ? kFabricAllowRoot : 0;
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  h->started_unix_ns = static_cast<std::uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<std::uint64_t>(ts.tv_nsec);
  copy_name(h->fabric_name, f.name);

  for (std::size_t i = 0; i < f.images.size(); ++i) {
    auto* e = new (base + o.images + i * sizeof(ImageEntry)) ImageEntry{};
    copy_name(e->name, f.images[i].name);
    e->id = f.images[i].id;
    e->uid = f.images[i].uid;
    e->gid = f.images[i].gid;
    e->namespaces = f.images[i].namespaces;
  }

  auto* segs = reinterpret_cast<SegmentEntry*>(base + o.segments);
  const std::uint64_t all = f.images.size() == 64 ? ~0ull : (1ull << f.images.size()) - 1;
  segs[0] = SegmentEntry{};
  segs[0].number = 0;
  segs[0].flags = kSegControl;
  segs[0].size = o.total;
  segs[0].owner = kNoImage;
  segs[0].read_mask = all;
  std::size_t row = 1;
  for (const auto& s : f.segments) {
    SegmentEntry& e = segs[row++];
    e = SegmentEntry{};
    e.number = s.number;
    e.flags = s.hugepages ? std::uint32_t{kSegHugepages} : 0u;
    e.size = s.size;
    e.owner = s.owner;
    e.gid = f.images[s.owner].gid;
    for (std::size_t i = 0; i < s.access.size(); ++i) {
      if (s.access[i] != config::Access::none) e.read_mask |= 1ull << i;
      if (s.access[i] == config::Access::read_write) e.write_mask |= 1ull << i;
    }
  }

  std::map<std::uint32_t, std::uint64_t> carve_next;  // next free offset in each declared segment
  for (std::size_t i = 0; i < f.channels.size(); ++i) {
    const auto& c = f.channels[i];
    auto* e = new (base + o.channels + i * sizeof(ChannelEntry)) ChannelEntry{};
    copy_name(e->name, c.name);
    e->kind = static_cast<std::uint32_t>(c.kind);
    e->image[0] = c.images[0];
    e->image[1] = c.images[1];
    e->depth = c.depth;
    e->max_message = c.max_message;
    e->ring_bytes = ring_bytes_of(c);
    e->receive_ring_bytes = c.mediated ? ring::mediated_receive_bytes(c.kind == config::ChannelKind::queue, e->ring_bytes, c.max_message) : e->ring_bytes;
    e->area_bytes = ring::channel_area_bytes(e->ring_bytes, e->receive_ring_bytes);
    e->mediated = c.mediated ? 1u : 0u;
    if (c.segment) {
      e->segment = *c.segment;
      e->offset = carve_next[*c.segment];
      carve_next[*c.segment] += e->area_bytes;
    } else {
      dedicated_segment(segs[row++], *e, i, (1ull << c.images[0]) | (1ull << c.images[1]));
    }
    e->state.store(ChannelState{}.encode(), std::memory_order_relaxed);
  }
  // Stream slots: the manager gives one to each connection (both images) at connect time.
  for (std::size_t k = 0; k < f.streams; ++k) {
    const std::size_t i = f.channels.size() + k;
    auto* e = new (base + o.channels + i * sizeof(ChannelEntry)) ChannelEntry{};
    copy_name(e->name, "stream." + std::to_string(k));
    e->kind = static_cast<std::uint32_t>(config::ChannelKind::stream);
    e->image[0] = e->image[1] = kNoImage;
    e->ring_bytes = ring::pipe_ring_bytes(f.stream_buffer);
    e->receive_ring_bytes = e->ring_bytes;  // (also when a connection is mediated)
    e->area_bytes = ring::channel_area_bytes(e->ring_bytes);
    dedicated_segment(segs[row++], *e, i, 0);  // both images are set per connection
    e->state.store(ChannelState{}.encode(), std::memory_order_relaxed);
  }
  for (std::uint32_t i = 0; i < kMaxListeners; ++i) new (base + o.listeners + i * sizeof(ListenerEntry)) ListenerEntry{};

  std::uint32_t att = 0;
  for (std::size_t i = 0; i < f.devices.size(); ++i) {
    const auto& d = f.devices[i];
    auto* e = new (base + o.devices + i * sizeof(DeviceEntry)) DeviceEntry{};
    copy_name(e->name, d.name);
    e->io_image = d.image;
    e->backend = static_cast<std::uint32_t>(d.backend);
    e->block_size = d.block_size;
    e->queues = d.queues;
    e->depth = d.depth;
    e->client_count = static_cast<std::uint32_t>(d.clients.size());
    e->capacity = d.size;
    e->data_bytes = d.data_size;
    e->direct_io = static_cast<std::uint32_t>(d.direct);
    e->io_timeout_s = d.io_timeout;
    e->first_attachment = att;
    std::memcpy(e->path, d.path.data(), std::min(d.path.size(), sizeof e->path - 1));
    for (const auto& c : d.clients) {
      auto* a = new (base + o.attachments + att * sizeof(AttachmentEntry)) AttachmentEntry{};
      a->device = static_cast<std::uint32_t>(i);
      a->client = c.image;
      const bool vm = f.images[c.image].vm;
      a->flags = (c.writable ? kAttachWritable : 0) | (vm ? kAttachVm : 0);
      a->segment = kAttachmentSegmentBase + att;
      a->weight = c.qos.weight;
      a->iops_limit = c.qos.iops_limit;
      a->bandwidth_limit = c.qos.bandwidth_limit;
      // A VM's data is in its guest memory: its segment holds the queue blocks (counters) only.
      a->segment_bytes = blk::attachment_bytes(d.queues, d.depth, vm ? 0 : d.data_size);
      a->state.store(AttachmentState{}.encode(), std::memory_order_relaxed);
      SegmentEntry& s = segs[row++];
      s = SegmentEntry{};
      s.number = a->segment;
      s.flags = kSegAttachment;
      s.size = a->segment_bytes;
      s.owner = kNoImage;
      s.read_mask = s.write_mask = (1ull << c.image) | (1ull << d.image);
      ++att;
    }
  }
}

Result<ControlView> ControlView::open(const std::byte* base, std::size_t size) {
  if (size < sizeof(ControlHeader)) return make_error(EPROTO, "control segment smaller than its header");
  const auto* h = reinterpret_cast<const ControlHeader*>(base);
  if (h->magic != kControlMagic) return make_error(EPROTO, "control segment has a bad magic");
  if (h->version != kControlVersion)
    return make_error(EPROTO, "control segment version " + std::to_string(h->version) + ", this build speaks " + std::to_string(kControlVersion));
  auto inside = [&](std::uint64_t off, std::uint64_t count, std::uint64_t stride) {
    return off % 8 == 0 && off <= size && count <= (size - off) / stride;
  };
  if (h->header_bytes < sizeof(ControlHeader) || h->total_bytes > size || !inside(h->image_offset, h->image_count, sizeof(ImageEntry)) ||
      !inside(h->segment_offset, h->segment_count, sizeof(SegmentEntry)) ||
      !inside(h->channel_offset, h->channel_count, sizeof(ChannelEntry)) || !inside(h->device_offset, h->device_count, sizeof(DeviceEntry)) ||
      !inside(h->attachment_offset, h->attachment_count, sizeof(AttachmentEntry)) ||
      !inside(h->listener_offset, h->listener_count, sizeof(ListenerEntry)) || h->image_count > config::kMaxImages ||
      h->stream_first > h->channel_count || h->stream_count > h->channel_count - h->stream_first)
    return make_error(EPROTO, "control segment tables lie outside the segment");
  ControlView v;
  auto* b = const_cast<std::byte*>(base);  // writable only where the mapping is (the manager's)
  v.hdr_ = h;
  v.images_ = reinterpret_cast<ImageEntry*>(b + h->image_offset);
  v.segments_ = reinterpret_cast<const SegmentEntry*>(b + h->segment_offset);
  v.channels_ = reinterpret_cast<ChannelEntry*>(b + h->channel_offset);
  v.devices_ = reinterpret_cast<DeviceEntry*>(b + h->device_offset);
  v.attachments_ = reinterpret_cast<AttachmentEntry*>(b + h->attachment_offset);
  v.listeners_ = reinterpret_cast<ListenerEntry*>(b + h->listener_offset);
  // Every device's attachments must lie inside the attachment table, and every image index
  // written at build time must name an image (stream slots' are set as connections come).
  const auto image_ok = [&](std::uint32_t i) { return i < h->image_count; };
  for (std::uint32_t i = 0; i < h->device_count; ++i)
    if (v.devices_[i].first_attachment > h->attachment_count || v.devices_[i].client_count > h->attachment_count - v.devices_[i].first_attachment ||
        !image_ok(v.devices_[i].io_image))
      return make_error(EPROTO, "control segment device table is inconsistent");
  for (std::uint32_t i = 0; i < h->attachment_count; ++i)
    if (!image_ok(v.attachments_[i].client) || v.attachments_[i].device >= h->device_count)
      return make_error(EPROTO, "control segment attachment table is inconsistent");
  for (std::uint32_t i = 0; i < h->segment_count; ++i)
    if (v.segments_[i].owner != kNoImage && !image_ok(v.segments_[i].owner))
      return make_error(EPROTO, "control segment segment table is inconsistent");
  for (std::uint32_t i = 0; i < h->stream_first; ++i)
    if (!image_ok(v.channels_[i].image[0]) || !image_ok(v.channels_[i].image[1]))
      return make_error(EPROTO, "control segment channel table is inconsistent");
  return v;
}

std::string entry_name(const char (&name)[32]) { return std::string(name, strnlen(name, sizeof name)); }

int ControlView::find_image(std::string_view name) const {
  for (std::uint32_t i = 0; i < image_count(); ++i)
    if (entry_name(images_[i].name) == name) return static_cast<int>(i);
  return -1;
}
int ControlView::find_channel(std::string_view name) const {
  for (std::uint32_t i = 0; i < channel_count(); ++i)
    if (entry_name(channels_[i].name) == name) return static_cast<int>(i);
  return -1;
}
int ControlView::find_device(std::string_view name) const {
  for (std::uint32_t i = 0; i < device_count(); ++i)
    if (entry_name(devices_[i].name) == name) return static_cast<int>(i);
  return -1;
}
int ControlView::find_attachment(std::uint32_t dev, std::uint32_t client) const {
  if (dev >= device_count()) return -1;
  const DeviceEntry& d = devices_[dev];
  for (std::uint32_t i = d.first_attachment; i < d.first_attachment + d.client_count; ++i)
    if (attachments_[i].client == client) return static_cast<int>(i);
  return -1;
}

const SegmentEntry* ControlView::find_segment(std::uint32_t number) const {
  for (std::uint32_t i = 0; i < segment_count(); ++i)
    if (segments_[i].number == number) return &segments_[i];
  return nullptr;
}

const char* side_state_name(SideState s) {
  switch (s) {
    case SideState::free: return "free";
    case SideState::open: return "open";
    case SideState::closed: return "closed";
    case SideState::dead: return "dead";
    case SideState::reset: return "reset";
    case SideState::broken: return "broken";
  }
  return "?";
}

std::string format(const ControlView& v, const config::Fabric* f) {
  std::ostringstream o;
  const auto& h = v.header();
  char line[512];
  // Stream slots (and their segments) are counted apart: they carry connections made at run time.
  o << "fabric \"" << entry_name(h.fabric_name) << "\": " << v.image_count() << " images, " << v.segment_count() - v.stream_count()
    << " segments, " << v.stream_first() << " channels, " << v.stream_count() << " stream slots";
  if (f) o << ", " << f->services.size() << " services";
  o << "; control segment " << human(h.total_bytes) << " (layout v" << h.version << ")\n";
  if (f) {
    const MemoryBudget b = worst_case_memory(v, *f);
    const std::uint64_t limit = memory_limit(*f);
    o << "shared memory, worst case: " << human_bytes(b.total()) << " (channels " << human_bytes(b.channels) << ", stream slots "
      << human_bytes(b.streams) << " + spare areas " << human_bytes(b.spares) << ", raw segments " << human_bytes(b.segments)
      << ", devices " << human_bytes(b.devices) << ", control " << human_bytes(b.control) << "); fabric.memory_limit "
      << human_bytes(limit) << (f->memory_limit ? "" : " (half of this host's memory)") << (b.total() > limit ? ": OVER THE LIMIT, up refuses it" : "")
      << "\n";
  }
  o << "\n";
  o << "images\n";
  std::snprintf(line, sizeof line, "  %-4s %-16s %7s %7s  %-24s %s\n", "id", "name", "uid", "gid", "namespaces", f ? "memory" : "");
  o << line;
  for (std::uint32_t i = 0; i < v.image_count(); ++i) {
    const auto& e = v.image(i);
    std::string ns;
    const char* names[] = {"user", "mount", "net", "pid", "ipc", "uts"};
    for (int b = 0; b < 6; ++b)
      if (e.namespaces & (1u << b)) ns += (ns.empty() ? "" : ",") + std::string(names[b]);
    const char* sharing = !f                      ? ""
                          : f->images[i].mediated ? "mediated (shares none: the data mover copies)"
                          : f->images[i].vm       ? "VM (guest memory shared with its devices' I/O partition, vhost-user)"
                                                  : "shared";
    std::snprintf(line, sizeof line, "  %-4u %-16s %7u %7u  %-24s %s\n", e.id, entry_name(e.name).c_str(), e.uid, e.gid, ns.empty() ? "-" : ns.c_str(),
                  sharing);
    o << line;
  }
  o << "\nsegments\n";
  std::snprintf(line, sizeof line, "  %-7s %-9s %10s  %-10s %s\n", "number", "kind", "size", "owner", "access");
  o << line;
  for (std::uint32_t i = 0; i < v.segment_count(); ++i) {
    const auto& s = v.segment(i);
    if ((s.flags & kSegChannel) && v.is_stream(s.number - kChannelSegmentBase)) continue;  // summarised below
    std::string access;
    for (std::uint32_t im = 0; im < v.image_count(); ++im) {
      if (!(s.read_mask & (1ull << im))) continue;
      access += (access.empty() ? "" : " ") + entry_name(v.image(im).name) + ((s.write_mask & (1ull << im)) ? "=rw" : "=ro");
    }
    const char* kind = (s.flags & kSegControl)      ? "control"
                       : (s.flags & kSegChannel)    ? "channel"
                       : (s.flags & kSegAttachment) ? "blk"
                       : (s.flags & kSegHugepages)  ? "raw,huge"
                                                    : "raw";
    std::string owner = s.owner == kNoImage ? "(manager)" : entry_name(v.image(s.owner).name);
    if (s.flags & kSegControl) access = "all=ro";
    std::snprintf(line, sizeof line, "  %-7u %-9s %10s  %-10s %s\n", s.number, kind, human(s.size).c_str(), owner.c_str(), access.c_str());
    o << line;
  }
  o << "\nchannels\n";
  std::snprintf(line, sizeof line, "  %-16s %-6s %-21s %-40s %-8s %-8s %s\n", "name", "kind", "between", "size", "segment", "offset", "copied by");
  o << line;
  for (std::uint32_t i = 0; i < v.stream_first(); ++i) {
    const auto& c = v.channel(i);
    std::string between = entry_name(v.image(c.image[0]).name) + " <-> " + entry_name(v.image(c.image[1]).name);
    const std::string receive = c.mediated && c.receive_ring_bytes != c.ring_bytes ? "receive " + human(c.receive_ring_bytes) : "";
    std::string sz = c.kind == static_cast<std::uint32_t>(config::ChannelKind::queue)
                         ? std::to_string(c.depth) + " x " + human(c.max_message) + " (ring " + human(c.ring_bytes) +
                               (receive.empty() ? "" : ", " + receive) + ")"
                         : human(c.ring_bytes) + " each way" + (receive.empty() ? "" : " (" + receive + ")");
    std::snprintf(line, sizeof line, "  %-16s %-6s %-21s %-40s %-8u %-8llu %s\n", entry_name(c.name).c_str(),
                  c.kind == static_cast<std::uint32_t>(config::ChannelKind::queue) ? "queue" : "pipe", between.c_str(), sz.c_str(),
                  c.segment, (unsigned long long)c.offset, c.mediated ? "the data mover" : "");
    o << line;
  }
  if (v.stream_count()) {
    o << "\nstreams: " << v.stream_count() << " connection slots (segments " << kChannelSegmentBase + v.stream_first() << "-"
      << kChannelSegmentBase + v.stream_first() + v.stream_count() - 1 << "), " << human(v.channel(v.stream_first()).ring_bytes)
      << " each way; " << v.listener_count() << " listener slots\n";
  }
  if (f && !f->services.empty()) {
    o << "\nservices\n";
    std::snprintf(line, sizeof line, "  %-16s %-16s %-36s %-11s %s\n", "name", "exported by", "server", "fabric port", "clients");
    o << line;
    for (const auto& sv : f->services) {
      std::string clients;
      for (std::uint32_t c : sv.clients) clients += (clients.empty() ? "" : " ") + f->images[c].name;
      const std::string server = sv.unix_path.empty() ? "127.0.0.1:" + std::to_string(sv.tcp_port) : sv.unix_path;
      std::snprintf(line, sizeof line, "  %-16s %-16s %-36s %-11u %s\n", sv.name.c_str(), f->images[sv.image].name.c_str(), server.c_str(), sv.port,
                    clients.c_str());
      o << line;
    }
  }
  if (v.device_count()) {
    o << "\ndevices\n";
    std::snprintf(line, sizeof line, "  %-12s %-8s %-7s %10s %6s %-14s %s\n", "name", "served by", "backend", "capacity", "block", "queues x depth", "clients");
    o << line;
    const char* backends[] = {"?", "file", "memory", "null"};
    for (std::uint32_t i = 0; i < v.device_count(); ++i) {
      const auto& d = v.device(i);
      std::string clients;
      for (std::uint32_t a = d.first_attachment; a < d.first_attachment + d.client_count; ++a) {
        const auto& at = v.attachment(a);
        clients += (clients.empty() ? "" : " ") + entry_name(v.image(at.client).name) + ((at.flags & kAttachWritable) ? "=rw" : "=ro") +
                   ((at.flags & kAttachVm) ? "(vm)" : "");
        if (at.weight != 1 || at.iops_limit || at.bandwidth_limit) {
          clients += "(w" + std::to_string(at.weight);
          if (at.iops_limit) clients += "," + std::to_string(at.iops_limit) + "iops";
          if (at.bandwidth_limit) clients += "," + human(at.bandwidth_limit) + "/s";
          clients += ")";
        }
      }
      std::string geometry = std::to_string(d.queues) + " x " + std::to_string(d.depth);
      std::string cap = d.capacity ? human(d.capacity) : std::string("(file)");
      std::snprintf(line, sizeof line, "  %-12s %-8s %-7s %10s %6u %-14s %s\n", entry_name(d.name).c_str(), entry_name(v.image(d.io_image).name).c_str(),
                    backends[d.backend < 4 ? d.backend : 0], cap.c_str(), d.block_size, geometry.c_str(), clients.c_str());
      o << line;
    }
  }
  return o.str();
}

std::string human_bytes(std::uint64_t b) {
  char buf[32];
  if (b >= (1ull << 30)) std::snprintf(buf, sizeof buf, "%.1f GiB", static_cast<double>(b) / (1ull << 30));
  else if (b >= (1ull << 20)) std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(b) / (1ull << 20));
  else return human(b);
  return buf;
}

MemoryBudget worst_case_memory(const ControlView& v, const config::Fabric& f) {
  const bool any_mediated_image = std::any_of(f.images.begin(), f.images.end(), [](const config::Image& im) { return im.mediated; });
  MemoryBudget m;
  std::uint64_t stream_area = 0;
  for (std::uint32_t i = 0; i < v.segment_count(); ++i) {
    const SegmentEntry& s = v.segment(i);
    if (s.flags & kSegControl) {
      m.control += s.size;
    } else if (s.flags & kSegChannel) {
      const std::uint32_t ch = s.number - kChannelSegmentBase;
      if (v.is_stream(ch)) {
        stream_area = s.size;
        m.streams += s.size * (any_mediated_image ? 2 : 1);  // (a connection with a mediated image: an area per side)
      } else {
        m.channels += s.size * (ch < v.channel_count() && v.channel(ch).mediated ? 2 : 1);
      }
    } else if (s.flags & kSegAttachment) {
      m.devices += s.size;
    } else {
      m.segments += s.size;
    }
  }
  m.spares = stream_area * std::min<std::uint64_t>(kMaxSpareStreamAreas, v.stream_count());
  return m;
}

std::uint64_t memory_limit(const config::Fabric& f) {
  if (f.memory_limit) return f.memory_limit;
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page) / 2 : ~0ull;
}

}  // namespace interpart::table

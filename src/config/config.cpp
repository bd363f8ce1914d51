#include "config/config.hpp"

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <toml++/toml.h>

#include "ring/channel_layout.hpp"

extern "C" const char interpart_default_config[];  // generated from examples/default.toml

namespace interpart::config {

namespace {

constexpr std::uint64_t kMaxMessage = 64ull << 20;
constexpr std::uint64_t kMaxRingBytes = 1ull << 32;

const char* type_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::table: return "a table";
    case toml::node_type::array: return "an array";
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a float";
    case toml::node_type::boolean: return "a boolean";
    default: return "a date/time";
  }
}

Location where_of(const toml::node& n) {
  return {static_cast<int>(n.source().begin.line), static_cast<int>(n.source().begin.column)};
}

bool valid_name(std::string_view s) {
  if (s.empty() || s.size() > kMaxNameLength) return false;
  for (char c : s)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-' && c != '.') return false;
  return true;
}

// Collects diagnostics for one source; every check names the field it is about.
class Checker {
 public:
  explicit Checker(std::string_view source) : source_(source) {}

  void error(Location at, std::string field, std::string reason) {
    errors_.push_back({source_, at, std::move(field), std::move(reason)});
  }
  void error(const toml::node& n, std::string field, std::string reason) { error(where_of(n), std::move(field), std::move(reason)); }

  // Flags every key of `t` that is not in `allowed`.
  void only_keys(const toml::table& t, const std::string& prefix, std::initializer_list<std::string_view> allowed) {
    for (auto&& [k, v] : t) {
      bool ok = false;
      for (auto a : allowed) ok = ok || k.str() == a;
      if (!ok) {
        Location at{static_cast<int>(k.source().begin.line), static_cast<int>(k.source().begin.column)};
        std::string expected;
        for (auto a : allowed) expected += (expected.empty() ? "" : ", ") + std::string(a);
        error(at, prefix + std::string(k.str()), "unknown key (expected one of: " + expected + ")");
      }
    }
  }

  const toml::node* need(const toml::table& t, Location table_at, std::string_view key, const std::string& field) {
    const toml::node* n = t.get(key);
    if (!n) error(table_at, field, "missing (required)");
    return n;
  }

  std::optional<std::string> string(const toml::node& n, const std::string& field) {
    if (auto v = n.value<std::string>(); v && n.is_string()) return v;
    error(n, field, std::string("must be a string, not ") + type_name(n));
    return std::nullopt;
  }

  std::optional<std::int64_t> integer(const toml::node& n, const std::string& field, std::int64_t lo, std::int64_t hi) {
    if (!n.is_integer()) {
      error(n, field, std::string("must be an integer, not ") + type_name(n));
      return std::nullopt;
    }
    std::int64_t v = n.as_integer()->get();
    if (v < lo || v > hi) {
      error(n, field, "must be between " + std::to_string(lo) + " and " + std::to_string(hi) + ", not " + std::to_string(v));
      return std::nullopt;
    }
    return v;
  }

  std::optional<bool> boolean(const toml::node& n, const std::string& field) {
    if (n.is_boolean()) return n.as_boolean()->get();
    error(n, field, std::string("must be true or false, not ") + type_name(n));
    return std::nullopt;
  }

  std::optional<std::uint64_t> size(const toml::node& n, const std::string& field) {
    if (n.is_integer()) {
      if (n.as_integer()->get() <= 0) {
        error(n, field, "must be positive");
        return std::nullopt;
      }
      return static_cast<std::uint64_t>(n.as_integer()->get());
    }
    if (n.is_string()) {
      if (auto v = parse_size(n.as_string()->get()); v && *v > 0) return v;
      error(n, field, "\"" + n.as_string()->get() + "\" is not a size (examples: 4096, \"64KiB\", \"2MiB\")");
      return std::nullopt;
    }
    error(n, field, std::string("must be a size (integer or string like \"1MiB\"), not ") + type_name(n));
    return std::nullopt;
  }

  // uid or gid: an integer, a user/group name, or "self" (the loading process's own id).
  std::optional<std::uint32_t> ident(const toml::node& n, const std::string& field, bool group) {
    if (n.is_integer()) return integer(n, field, 0, 0xfffffffe);
    if (!n.is_string()) {
      error(n, field, std::string("must be an integer id or a name, not ") + type_name(n));
      return std::nullopt;
    }
    const std::string& s = n.as_string()->get();
    if (s == "self") return group ? ::getgid() : ::getuid();
    if (group) {
      if (const struct group* g = ::getgrnam(s.c_str())) return g->gr_gid;
      error(n, field, "unknown group \"" + s + "\"");
    } else {
      if (const struct passwd* p = ::getpwnam(s.c_str())) return p->pw_uid;
      error(n, field, "unknown user \"" + s + "\"");
    }
    return std::nullopt;
  }

  std::vector<Diagnostic> take() { return std::move(errors_); }
  bool clean() const { return errors_.empty(); }

 private:
  std::string source_;
  std::vector<Diagnostic> errors_;
};

// Iterates `root[key]` as an array of tables, reporting anything else.
template <class F>
void each_table(Checker& c, const toml::table& root, std::string_view key, F&& fn) {
  const toml::node* n = root.get(key);
  if (!n) return;
  const toml::array* arr = n->as_array();
  if (!arr) {
    c.error(*n, std::string(key), std::string("must be an array of tables ([[") + std::string(key) + "]]), not " + type_name(*n));
    return;
  }
  std::size_t i = 0;
  for (const toml::node& el : *arr) {
    std::string field = std::string(key) + "[" + std::to_string(i) + "]";
    if (const toml::table* t = el.as_table())
      fn(*t, field, where_of(el));
    else
      c.error(el, field, std::string("must be a table, not ") + type_name(el));
    ++i;
  }
}

void parse_fabric(Checker& c, const toml::table& root, Fabric& f) {
  const toml::node* n = root.get("fabric");
  if (!n) {
    c.error(Location{1, 1}, "fabric", "missing [fabric] table (name, socket)");
    return;
  }
  const toml::table* t = n->as_table();
  if (!t) {
    c.error(*n, "fabric", std::string("must be a table, not ") + type_name(*n));
    return;
  }
  c.only_keys(*t, "fabric.", {"name", "socket", "group", "allow_root", "streams", "stream_buffer", "mover_threads", "memory_limit"});
  if (auto* v = t->get("name")) {
    if (auto s = c.string(*v, "fabric.name")) {
      if (valid_name(*s)) f.name = *s;
      else c.error(*v, "fabric.name", "must be 1-31 characters of letters, digits, '_', '-', '.'");
    }
  }
  if (auto* v = c.need(*t, where_of(*n), "socket", "fabric.socket")) {
    if (auto s = c.string(*v, "fabric.socket")) {
      if (s->empty() || (*s)[0] != '/') c.error(*v, "fabric.socket", "must be an absolute path");
      else if (s->size() >= 108) c.error(*v, "fabric.socket", "longer than a Unix socket path may be (107 bytes)");
      else f.socket = *s;
    }
  }
  if (auto* v = t->get("group")) f.group = c.ident(*v, "fabric.group", true);
  if (auto* v = t->get("allow_root")) f.allow_root = c.boolean(*v, "fabric.allow_root").value_or(false);
  if (auto* v = t->get("mover_threads"))
    f.mover_threads = static_cast<std::uint32_t>(c.integer(*v, "fabric.mover_threads", 0, 16).value_or(f.mover_threads));
  if (auto* v = t->get("streams")) f.streams = static_cast<std::uint32_t>(c.integer(*v, "fabric.streams", 0, 256).value_or(64));
  if (auto* v = t->get("memory_limit")) f.memory_limit = c.size(*v, "fabric.memory_limit").value_or(0);
  if (auto* v = t->get("stream_buffer")) {
    if (auto sz = c.size(*v, "fabric.stream_buffer")) {
      if (*sz < 4096 || *sz > (64u << 20)) c.error(*v, "fabric.stream_buffer", "must be between 4 KiB and 64 MiB");
      else f.stream_buffer = *sz;
    }
  }
}

std::uint32_t parse_namespaces(Checker& c, const toml::node& n, const std::string& field) {
  static const std::map<std::string, std::uint32_t, std::less<>> known = {
      {"user", kNsUser}, {"mount", kNsMount}, {"net", kNsNet}, {"pid", kNsPid}, {"ipc", kNsIpc}, {"uts", kNsUts}};
  const toml::array* arr = n.as_array();
  if (!arr) {
    c.error(n, field, std::string("must be an array of namespace names, not ") + type_name(n));
    return 0;
  }
  std::uint32_t bits = 0;
  for (const toml::node& el : *arr) {
    auto s = c.string(el, field);
    if (!s) continue;
    auto it = known.find(*s);
    if (it == known.end()) c.error(el, field, "unknown namespace \"" + *s + "\" (user, mount, net, pid, ipc, uts)");
    else bits |= it->second;
  }
  return bits;
}

void parse_images(Checker& c, const toml::table& root, Fabric& f) {
  std::map<std::string, Location> names;
  std::map<std::int64_t, Location> ids;
  each_table(c, root, "images", [&](const toml::table& t, const std::string& field, Location at) {
    c.only_keys(t, field + ".", {"name", "id", "uid", "gid", "namespaces", "mediated", "kind"});
    Image img;
    img.where = at;
    bool ok = true;
    if (auto* v = c.need(t, at, "name", field + ".name")) {
      if (auto s = c.string(*v, field + ".name")) {
        if (!valid_name(*s)) {
          c.error(*v, field + ".name", "must be 1-31 characters of letters, digits, '_', '-', '.'");
          ok = false;
        } else if (auto [it, fresh] = names.emplace(*s, where_of(*v)); !fresh) {
          c.error(*v, field + ".name", "duplicate image \"" + *s + "\" (first at line " + std::to_string(it->second.line) + ")");
          ok = false;
        }
        img.name = *s;
      } else ok = false;
    } else ok = false;
    if (auto* v = c.need(t, at, "id", field + ".id")) {
      if (auto id = c.integer(*v, field + ".id", 1, 65535)) {
        if (auto [it, fresh] = ids.emplace(*id, where_of(*v)); !fresh)
          c.error(*v, field + ".id", "duplicate image id " + std::to_string(*id) + " (first at line " + std::to_string(it->second.line) + ")");
        img.id = static_cast<std::uint32_t>(*id);
      }
    }
    if (auto* v = c.need(t, at, "uid", field + ".uid")) img.uid = c.ident(*v, field + ".uid", false).value_or(0);
    if (auto* v = c.need(t, at, "gid", field + ".gid")) img.gid = c.ident(*v, field + ".gid", true).value_or(0);
    if (auto* v = t.get("namespaces")) img.namespaces = parse_namespaces(c, *v, field + ".namespaces");
    if (auto* v = t.get("mediated")) img.mediated = c.boolean(*v, field + ".mediated").value_or(false);
    if (auto* v = t.get("kind")) {
      if (auto k = c.string(*v, field + ".kind")) {
        if (*k == "vm") img.vm = true;
        else if (*k != "processes") c.error(*v, field + ".kind", "must be \"processes\" or \"vm\", not \"" + *k + "\"");
        if (img.vm && img.mediated) c.error(*v, field + ".kind", "a VM image cannot be mediated: its devices share guest memory with the I/O partition");
      }
    }
    if (ok) {
      if (f.images.size() == kMaxImages) c.error(at, field, "more than 64 images in one fabric");
      else f.images.push_back(std::move(img));
    }
  });
  if (f.images.empty() && !root.get("images")) c.error(Location{1, 1}, "images", "no [[images]] declared");
}

void parse_segments(Checker& c, const toml::table& root, Fabric& f) {
  std::map<std::int64_t, Location> numbers;
  each_table(c, root, "segments", [&](const toml::table& t, const std::string& field, Location at) {
    c.only_keys(t, field + ".", {"number", "size", "hugepages", "owner", "access"});
    Segment seg;
    seg.where = at;
    seg.access.assign(f.images.size(), Access::none);
    if (auto* v = c.need(t, at, "number", field + ".number")) {
      if (v->is_integer() && v->as_integer()->get() == 0) {
        c.error(*v, field + ".number", "segment 0 is the control segment and cannot be declared");
      } else if (auto num = c.integer(*v, field + ".number", 1, 65535)) {
        if (auto [it, fresh] = numbers.emplace(*num, where_of(*v)); !fresh)
          c.error(*v, field + ".number", "duplicate segment number " + std::to_string(*num) + " (first at line " + std::to_string(it->second.line) + ")");
        seg.number = static_cast<std::uint32_t>(*num);
      }
    }
    if (auto* v = t.get("hugepages")) seg.hugepages = c.boolean(*v, field + ".hugepages").value_or(false);
    if (auto* v = c.need(t, at, "size", field + ".size")) {
      if (auto sz = c.size(*v, field + ".size")) {
        const std::uint64_t unit = seg.hugepages ? 2ull << 20 : ring::kLayoutPage;
        if (*sz % unit != 0)
          c.error(*v, field + ".size", std::to_string(*sz) + " is not a multiple of the " + (seg.hugepages ? "huge page size (2 MiB)" : "page size (4096)"));
        else if (*sz > (64ull << 30))
          c.error(*v, field + ".size", "larger than 64 GiB");
        seg.size = *sz;
      }
    }
    if (auto* v = c.need(t, at, "owner", field + ".owner")) {
      if (auto s = c.string(*v, field + ".owner")) {
        int idx = f.image_index(*s);
        if (idx < 0) c.error(*v, field + ".owner", "unknown image \"" + *s + "\"");
        else {
          seg.owner = static_cast<std::uint32_t>(idx);
          seg.access[idx] = Access::read_write;
        }
      }
    }
    if (auto* v = t.get("access")) {
      const toml::table* acc = v->as_table();
      if (!acc) c.error(*v, field + ".access", std::string("must be a table of image = \"rw\"|\"ro\", not ") + type_name(*v));
      else
        for (auto&& [k, av] : *acc) {
          std::string afield = field + ".access." + std::string(k.str());
          int idx = f.image_index(k.str());
          if (idx < 0) {
            c.error(av, afield, "unknown image \"" + std::string(k.str()) + "\"");
            continue;
          }
          auto s = c.string(av, afield);
          if (!s) continue;
          if (*s == "rw") seg.access[idx] = Access::read_write;
          else if (*s == "ro") {
            if (static_cast<std::uint32_t>(idx) == seg.owner && t.get("owner")) c.error(av, afield, "the owner always has read-write access");
            else seg.access[idx] = Access::read_only;
          } else c.error(av, afield, "must be \"rw\" or \"ro\", not \"" + *s + "\"");
        }
    }
    f.segments.push_back(std::move(seg));
  });
}

void parse_channels(Checker& c, const toml::table& root, Fabric& f) {
  std::map<std::string, Location> names;
  std::map<std::uint32_t, std::uint64_t> carved;  // segment number -> bytes of channel areas in it
  std::map<std::uint32_t, Location> carved_at;
  each_table(c, root, "channels", [&](const toml::table& t, const std::string& field, Location at) {
    c.only_keys(t, field + ".", {"name", "kind", "between", "depth", "max_message", "capacity", "segment", "mode"});
    Channel ch;
    ch.where = at;
    if (auto* v = c.need(t, at, "name", field + ".name")) {
      if (auto s = c.string(*v, field + ".name")) {
        if (!valid_name(*s)) c.error(*v, field + ".name", "must be 1-31 characters of letters, digits, '_', '-', '.'");
        else if (auto [it, fresh] = names.emplace(*s, where_of(*v)); !fresh)
          c.error(*v, field + ".name", "duplicate channel \"" + *s + "\" (first at line " + std::to_string(it->second.line) + ")");
        ch.name = *s;
      }
    }
    if (auto* v = c.need(t, at, "kind", field + ".kind")) {
      if (auto s = c.string(*v, field + ".kind")) {
        if (*s == "queue") ch.kind = ChannelKind::queue;
        else if (*s == "pipe") ch.kind = ChannelKind::pipe;
        else c.error(*v, field + ".kind", "must be \"queue\" or \"pipe\", not \"" + *s + "\"");
      }
    }
    bool sides_ok = false;
    if (auto* v = c.need(t, at, "between", field + ".between")) {
      const toml::array* arr = v->as_array();
      if (!arr || arr->size() != 2) {
        c.error(*v, field + ".between", "must be an array of two image names");
      } else {
        sides_ok = true;
        for (int s = 0; s < 2; ++s) {
          auto name = c.string(*arr->get(s), field + ".between");
          int idx = name ? f.image_index(*name) : -1;
          if (name && idx < 0) c.error(*arr->get(s), field + ".between", "unknown image \"" + *name + "\"");
          if (idx < 0) sides_ok = false;
          else ch.images[s] = static_cast<std::uint32_t>(idx);
        }
        if (sides_ok && ch.images[0] == ch.images[1]) {
          c.error(*v, field + ".between", "a channel connects two different images");
          sides_ok = false;
        }
      }
    }
    const bool queue = ch.kind == ChannelKind::queue;
    if (auto* v = t.get("depth")) {
      if (!queue) c.error(*v, field + ".depth", "only queues have a depth (pipes have a capacity)");
      else ch.depth = static_cast<std::uint32_t>(c.integer(*v, field + ".depth", 1, 1 << 24).value_or(1));
    } else ch.depth = 256;
    if (auto* v = t.get("max_message")) {
      if (!queue) c.error(*v, field + ".max_message", "only queues have a max_message");
      else if (auto sz = c.size(*v, field + ".max_message")) {
        if (*sz > kMaxMessage) c.error(*v, field + ".max_message", "larger than 64 MiB");
        else ch.max_message = static_cast<std::uint32_t>(*sz);
      }
    } else ch.max_message = 4096;
    if (auto* v = t.get("capacity")) {
      if (queue) c.error(*v, field + ".capacity", "only pipes have a capacity (queues have depth and max_message)");
      else if (auto sz = c.size(*v, field + ".capacity")) ch.capacity = *sz;
    } else ch.capacity = 64 * 1024;
    const std::uint64_t ring_bytes = queue ? ring::queue_ring_bytes(ch.depth, ch.max_message) : ring::pipe_ring_bytes(ch.capacity);
    if (ring_bytes > kMaxRingBytes)
      c.error(at, field, "ring of " + std::to_string(ring_bytes) + " bytes is larger than 4 GiB; lower depth/max_message/capacity");
    if (auto* v = t.get("mode")) {
      if (auto m = c.string(*v, field + ".mode")) {
        if (*m == "mediated") ch.mediated = true;
        else if (*m != "direct") c.error(*v, field + ".mode", "must be \"direct\" or \"mediated\", not \"" + *m + "\"");
      }
    }
    if (sides_ok && (f.images[ch.images[0]].mediated || f.images[ch.images[1]].mediated)) ch.mediated = true;
    if (auto* v = t.get("segment"); v && ch.mediated) {
      c.error(*v, field + ".segment", "a mediated channel has an area per side, shared with the manager only; it cannot be placed in a shared segment");
    } else if (v) {
      if (auto num = c.integer(*v, field + ".segment", 1, 65535)) {
        const Segment* seg = f.find_segment(static_cast<std::uint32_t>(*num));
        if (!seg) c.error(*v, field + ".segment", "unknown segment " + std::to_string(*num));
        else {
          ch.segment = seg->number;
          if (sides_ok)
            for (int s = 0; s < 2; ++s)
              if (seg->access[ch.images[s]] != Access::read_write)
                c.error(*v, field + ".segment", "image \"" + f.images[ch.images[s]].name + "\" has no read-write access to segment " +
                                                    std::to_string(seg->number) + ", so it cannot use a channel placed there");
          carved[seg->number] += ring::channel_area_bytes(ring_bytes);
          carved_at.emplace(seg->number, where_of(*v));
        }
      }
    }
    f.channels.push_back(std::move(ch));
  });
  for (auto& [num, bytes] : carved) {
    const Segment* seg = f.find_segment(num);
    if (seg && seg->size && bytes > seg->size)
      c.error(carved_at[num], "segments(number=" + std::to_string(num) + ").size",
              "segment " + std::to_string(num) + " has " + std::to_string(seg->size) + " bytes but the channels placed in it need " +
                  std::to_string(bytes));
  }
}

std::optional<std::uint64_t> power_of_two(Checker& c, const toml::node& n, const std::string& field, std::int64_t lo, std::int64_t hi) {
  auto v = c.integer(n, field, lo, hi);
  if (v && (*v & (*v - 1)) != 0) {
    c.error(n, field, std::to_string(*v) + " is not a power of two");
    return std::nullopt;
  }
  return v ? std::optional<std::uint64_t>(static_cast<std::uint64_t>(*v)) : std::nullopt;
}

void parse_qos(Checker& c, const toml::node& n, const std::string& field, Qos& q) {
  const toml::table* t = n.as_table();
  if (!t) {
    c.error(n, field, std::string("must be a table { weight, iops_limit, bandwidth_limit }, not ") + type_name(n));
    return;
  }
  c.only_keys(*t, field + ".", {"weight", "iops_limit", "bandwidth_limit"});
  if (auto* v = t->get("weight")) q.weight = static_cast<std::uint32_t>(c.integer(*v, field + ".weight", 1, 1000).value_or(1));
  if (auto* v = t->get("iops_limit")) q.iops_limit = static_cast<std::uint64_t>(c.integer(*v, field + ".iops_limit", 1, 100'000'000).value_or(0));
  if (auto* v = t->get("bandwidth_limit")) q.bandwidth_limit = c.size(*v, field + ".bandwidth_limit").value_or(0);
}

void parse_devices(Checker& c, const toml::table& root, Fabric& f) {
  std::map<std::string, Location> names;
  each_table(c, root, "devices", [&](const toml::table& t, const std::string& field, Location at) {
    c.only_keys(t, field + ".", {"name", "image", "backend", "path", "size", "block_size", "queues", "depth", "data_size", "direct", "io_timeout", "clients", "qos", "vhost_user"});
    Device d;
    d.where = at;
    if (auto* v = c.need(t, at, "name", field + ".name")) {
      if (auto s = c.string(*v, field + ".name")) {
        if (!valid_name(*s)) c.error(*v, field + ".name", "must be 1-31 characters of letters, digits, '_', '-', '.'");
        else if (auto [it, fresh] = names.emplace(*s, where_of(*v)); !fresh)
          c.error(*v, field + ".name", "duplicate device \"" + *s + "\" (first at line " + std::to_string(it->second.line) + ")");
        d.name = *s;
      }
    }
    bool image_ok = false;
    if (auto* v = c.need(t, at, "image", field + ".image")) {
      if (auto s = c.string(*v, field + ".image")) {
        int idx = f.image_index(*s);
        if (idx < 0) c.error(*v, field + ".image", "unknown image \"" + *s + "\"");
        else d.image = static_cast<std::uint32_t>(idx), image_ok = true;
      }
    }
    if (auto* v = c.need(t, at, "backend", field + ".backend")) {
      if (auto s = c.string(*v, field + ".backend")) {
        if (*s == "file") d.backend = Backend::file;
        else if (*s == "memory") d.backend = Backend::memory;
        else if (*s == "null") d.backend = Backend::null;
        else c.error(*v, field + ".backend", "must be \"file\", \"memory\" or \"null\", not \"" + *s + "\"");
      }
    }
    if (auto* v = t.get("block_size")) d.block_size = static_cast<std::uint32_t>(power_of_two(c, *v, field + ".block_size", 512, 65536).value_or(4096));
    if (auto* v = t.get("path")) {
      if (d.backend != Backend::file) c.error(*v, field + ".path", "only the file backend has a path");
      else if (auto s = c.string(*v, field + ".path")) {
        if (s->empty() || (*s)[0] != '/') c.error(*v, field + ".path", "must be an absolute path");
        else d.path = *s;
      }
    } else if (d.backend == Backend::file && t.get("backend")) {
      c.error(at, field + ".path", "missing (the file backend needs the path of a file or block device)");
    }
    if (auto* v = t.get("direct")) {
      if (d.backend != Backend::file) c.error(*v, field + ".direct", "only the file backend has direct I/O");
      else if (auto b = v->value<bool>()) d.direct = *b ? DirectIo::on : DirectIo::off;
      else if (auto s = v->value<std::string>(); s && *s == "auto") d.direct = DirectIo::automatic;
      else c.error(*v, field + ".direct", std::string("must be true, false or \"auto\", not ") + type_name(*v));
    }
    if (auto* v = t.get("io_timeout")) d.io_timeout = static_cast<std::uint32_t>(c.integer(*v, field + ".io_timeout", 0, 86400).value_or(30));
    if (auto* v = t.get("size")) {
      if (auto sz = c.size(*v, field + ".size")) {
        if (*sz % d.block_size != 0) c.error(*v, field + ".size", std::to_string(*sz) + " is not a multiple of the block size " + std::to_string(d.block_size));
        else d.size = *sz;
      }
    } else {
      c.error(at, field + ".size", "missing (the device's capacity; a file is created sparse or grown to it)");
    }
    if (auto* v = t.get("queues")) d.queues = static_cast<std::uint32_t>(c.integer(*v, field + ".queues", 1, 64).value_or(1));
    if (auto* v = t.get("depth")) d.depth = static_cast<std::uint32_t>(power_of_two(c, *v, field + ".depth", 1, 4096).value_or(64));
    if (auto* v = t.get("data_size")) {
      if (auto sz = c.size(*v, field + ".data_size")) {
        if (*sz % ring::kLayoutPage != 0 || *sz < d.block_size) c.error(*v, field + ".data_size", "must be a multiple of 4096 and at least one block");
        else d.data_size = *sz;
      }
    }
    if (auto* v = c.need(t, at, "clients", field + ".clients")) {
      const toml::table* cl = v->as_table();
      if (!cl) c.error(*v, field + ".clients", std::string("must be a table of image = \"rw\"|\"ro\", not ") + type_name(*v));
      else {
        for (auto&& [k, av] : *cl) {
          const std::string cfield = field + ".clients." + std::string(k.str());
          const int idx = f.image_index(k.str());
          if (idx < 0) {
            c.error(av, cfield, "unknown image \"" + std::string(k.str()) + "\"");
            continue;
          }
          if (image_ok && static_cast<std::uint32_t>(idx) == d.image) {
            c.error(av, cfield, "the I/O partition serves the device; it is not one of its clients");
            continue;
          }
          auto s = c.string(av, cfield);
          if (!s) continue;
          if (*s != "rw" && *s != "ro") {
            c.error(av, cfield, "must be \"rw\" or \"ro\", not \"" + *s + "\"");
            continue;
          }
          d.clients.push_back({static_cast<std::uint32_t>(idx), *s == "rw", {}});
        }
        if (d.clients.empty() && cl->empty()) c.error(*v, field + ".clients", "a device needs at least one client");
      }
    }
    if (auto* v = t.get("qos")) {
      const toml::table* q = v->as_table();
      if (!q) c.error(*v, field + ".qos", std::string("must be a table of image = { weight, iops_limit, bandwidth_limit }, not ") + type_name(*v));
      else
        for (auto&& [k, qv] : *q) {
          const std::string client(k.str());  // (a named copy: lambdas may not capture structured bindings before C++20's DR)
          const std::string qfield = field + ".qos." + client;
          auto it = std::find_if(d.clients.begin(), d.clients.end(), [&](const DeviceClient& dc) { return f.images[dc.image].name == client; });
          if (it == d.clients.end()) c.error(qv, qfield, "\"" + client + "\" is not a client of this device");
          else parse_qos(c, qv, qfield, it->qos);
        }
    }
    if (auto* v = t.get("vhost_user")) {
      const toml::table* vt = v->as_table();
      if (!vt) c.error(*v, field + ".vhost_user", std::string("must be a table of VM image = \"socket path\", not ") + type_name(*v));
      else
        for (auto&& [k, pv] : *vt) {
          const std::string client(k.str());
          const std::string vfield = field + ".vhost_user." + client;
          auto it = std::find_if(d.clients.begin(), d.clients.end(), [&](const DeviceClient& dc) { return f.images[dc.image].name == client; });
          auto path = c.string(pv, vfield);
          if (!path) continue;
          if (it == d.clients.end()) c.error(pv, vfield, "\"" + client + "\" is not a client of this device");
          else if (!f.images[it->image].vm) c.error(pv, vfield, "\"" + client + "\" is not a VM image (kind = \"vm\"): it opens the device as a process does");
          else if (path->empty() || (*path)[0] != '/' || path->size() >= 108) c.error(pv, vfield, "must be an absolute socket path shorter than 108 bytes");
          else it->vhost_user = *path;
        }
    }
    for (const DeviceClient& dc : d.clients)
      if (f.images[dc.image].vm && dc.vhost_user.empty())
        c.error(at, field + ".vhost_user." + f.images[dc.image].name, "VM client \"" + f.images[dc.image].name + "\" needs the path of its vhost-user socket");
    if (image_ok && f.images[d.image].vm) c.error(at, field + ".image", "a VM image cannot be a device's I/O partition");
    f.devices.push_back(std::move(d));
  });
}

}  // namespace

const Image* Fabric::find_image(std::string_view n) const {
  int i = image_index(n);
  return i < 0 ? nullptr : &images[static_cast<std::size_t>(i)];
}
int Fabric::image_index(std::string_view n) const {
  for (std::size_t i = 0; i < images.size(); ++i)
    if (images[i].name == n) return static_cast<int>(i);
  return -1;
}
const Segment* Fabric::find_segment(std::uint32_t number) const {
  for (const auto& s : segments)
    if (s.number == number) return &s;
  return nullptr;
}

const Service* Fabric::find_service(std::string_view name) const {
  for (const auto& s : services)
    if (s.name == name) return &s;
  return nullptr;
}

std::string Diagnostic::to_string() const {
  std::ostringstream o;
  o << file << ':' << where.line << ':' << where.column << ": " << field << ": " << reason;
  return o.str();
}

std::optional<std::uint64_t> parse_size(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size() && s[i] == ' ') ++i;
  if (i == s.size() || !std::isdigit(static_cast<unsigned char>(s[i]))) return std::nullopt;
  std::uint64_t v = 0;
  for (; i < s.size() && std::isdigit(static_cast<unsigned char>(s[i])); ++i) {
    if (v > (UINT64_MAX - 9) / 10) return std::nullopt;
    v = v * 10 + static_cast<std::uint64_t>(s[i] - '0');
  }
  while (i < s.size() && s[i] == ' ') ++i;
  std::string unit(s.substr(i));
  for (auto& ch : unit) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  static const std::map<std::string, unsigned> shifts = {{"", 0},   {"b", 0},   {"k", 10},  {"kb", 10}, {"kib", 10},
                                                          {"m", 20}, {"mb", 20}, {"mib", 20}, {"g", 30}, {"gb", 30}, {"gib", 30}};
  auto it = shifts.find(unit);
  if (it == shifts.end()) return std::nullopt;
  if (it->second && v > (UINT64_MAX >> it->second)) return std::nullopt;
  return v << it->second;
}

void parse_services(Checker& c, const toml::table& root, Fabric& f) {
  std::map<std::string, Location> names;
  each_table(c, root, "services", [&](const toml::table& t, const std::string& field, Location at) {
    c.only_keys(t, field + ".", {"name", "image", "unix", "tcp", "port", "clients"});
    Service sv;
    sv.where = at;
    if (auto* v = c.need(t, at, "name", field + ".name")) {
      if (auto s = c.string(*v, field + ".name")) {
        if (!valid_name(*s)) c.error(*v, field + ".name", "must be 1-31 characters of letters, digits, '_', '-', '.'");
        else if (auto [it, fresh] = names.emplace(*s, where_of(*v)); !fresh)
          c.error(*v, field + ".name", "duplicate service \"" + *s + "\" (first at line " + std::to_string(it->second.line) + ")");
        sv.name = *s;
      }
    }
    if (auto* v = c.need(t, at, "image", field + ".image")) {
      if (auto s = c.string(*v, field + ".image")) {
        const int idx = f.image_index(*s);
        if (idx < 0) c.error(*v, field + ".image", "unknown image \"" + *s + "\"");
        else sv.image = static_cast<std::uint32_t>(idx);
      }
    }
    const toml::node* un = t.get("unix");
    const toml::node* tc = t.get("tcp");
    if (un && tc) c.error(*tc, field + ".tcp", "a service is reached by `unix` or by `tcp`, not both");
    else if (!un && !tc) c.error(at, field + ".unix", "missing: the server's Unix socket path (or `tcp`, its loopback port)");
    if (un)
      if (auto s = c.string(*un, field + ".unix")) {
        if (s->empty() || s->size() >= 108) c.error(*un, field + ".unix", "must be a path of 1-107 characters");
        else sv.unix_path = *s;
      }
    if (tc) sv.tcp_port = static_cast<std::uint32_t>(c.integer(*tc, field + ".tcp", 1, 65535).value_or(0));
    sv.port = 60000 + static_cast<std::uint32_t>(f.services.size());
    if (auto* v = t.get("port")) sv.port = static_cast<std::uint32_t>(c.integer(*v, field + ".port", 1, 65535).value_or(sv.port));
    if (auto* v = c.need(t, at, "clients", field + ".clients")) {
      const toml::array* arr = v->as_array();
      if (!arr || arr->empty()) c.error(*v, field + ".clients", "must be a non-empty array of image names");
      else
        for (auto&& n : *arr) {
          auto s = c.string(n, field + ".clients");
          if (!s) continue;
          const int idx = f.image_index(*s);
          if (idx < 0) c.error(n, field + ".clients", "unknown image \"" + *s + "\"");
          else if (static_cast<std::uint32_t>(idx) == sv.image) c.error(n, field + ".clients", "the exporting image is not one of its clients");
          else sv.clients.push_back(static_cast<std::uint32_t>(idx));
        }
    }
    for (const Service& o : f.services)
      if (o.image == sv.image && o.port == sv.port)
        c.error(at, field + ".port", "fabric port " + std::to_string(sv.port) + " of image \"" + f.images[sv.image].name +
                                         "\" is already service \"" + o.name + "\"'s");
    f.services.push_back(std::move(sv));
  });
}

// A mediated image maps no memory another image maps: no shared segment, no block device.
void check_mediated(Checker& c, const Fabric& f) {
  // (Indices of entries that failed to parse may point nowhere: those already have an error.)
  auto mediated = [&](std::uint32_t i) { return i < f.images.size() && f.images[i].mediated; };
  for (const Segment& seg : f.segments) {
    std::vector<std::uint32_t> users;
    for (std::uint32_t i = 0; i < seg.access.size(); ++i)
      if (seg.access[i] != Access::none) users.push_back(i);
    for (std::uint32_t i : users)
      if (mediated(i) && users.size() > 1)
        c.error(seg.where, "segments(number=" + std::to_string(seg.number) + ").access",
                "image \"" + f.images[i].name + "\" is mediated: it may not share a segment with other images");
  }
  for (std::size_t d = 0; d < f.devices.size(); ++d) {
    const Device& dev = f.devices[d];
    if (mediated(dev.image))
      c.error(dev.where, "devices[" + std::to_string(d) + "].image", "image \"" + f.images[dev.image].name +
                                                                    "\" is mediated: its attachments would share memory with clients");
    for (const DeviceClient& cl : dev.clients)
      if (mediated(cl.image))
        c.error(dev.where, "devices[" + std::to_string(d) + "].clients." + f.images[cl.image].name,
                "image is mediated: a block attachment is memory shared with the I/O partition");
  }
}

ParseResult parse(std::string_view text, std::string_view source) {
  Checker c(source);
  ParseResult out;
  toml::table root;
  try {
    root = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    Location at{static_cast<int>(e.source().begin.line), static_cast<int>(e.source().begin.column)};
    c.error(at, "(syntax)", std::string(e.description()));
    out.errors = c.take();
    return out;
  }
  Fabric f;
  f.source = std::string(source);
  c.only_keys(root, "", {"fabric", "images", "segments", "channels", "devices", "services"});
  parse_fabric(c, root, f);
  parse_images(c, root, f);
  parse_segments(c, root, f);
  parse_channels(c, root, f);
  parse_devices(c, root, f);
  parse_services(c, root, f);
  check_mediated(c, f);
  out.errors = c.take();
  if (out.errors.empty()) out.fabric = std::move(f);
  return out;
}

ParseResult load_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    ParseResult r;
    r.errors.push_back({path, {0, 0}, "(file)", std::string("cannot read: ") + std::strerror(errno)});
    return r;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return parse(ss.str(), path);
}

std::string_view default_text() { return interpart_default_config; }

}  // namespace interpart::config

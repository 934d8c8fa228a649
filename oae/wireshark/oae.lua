-- oae.lua: Wireshark dissector for the oae wire format, version 1 (docs/protocol.md).
--
-- Written for the Wireshark 4.x Lua API (Lua 5.2, bit32). Load it with
--   tshark -X lua_script:oae.lua -r capture.pcapng
-- or install it with `oae wireshark install` (personal Lua plugin folder).
--
-- It registers on the EtherType (preference, default 0x88B5) in the "ethertype" table,
-- which Ethernet II as well as Linux cooked captures (SLL, SLL2: `-i any`) dispatch on.
-- Every field of the record is shown under `oae.`; the check is verified (CRC32C, or
-- SipHash-2-4 when a link key is set in the preferences); a frame the oae codecs would
-- reject gets expert info and the fields `oae.error`, `oae.error.field`,
-- `oae.error.offset`, naming the first failure in the order of docs/protocol.md §4, exactly
-- as the C and Python codecs report it.

local FRAME_LEN = 78
local RECORD_LEN = 64
local ETH_HLEN = 14
local PAYLOAD_MAX = 16
local DEFAULT_ETHERTYPE = 0x88B5

local oae = Proto("oae", "Open Atomic Ethernet")

-- Enumerations (docs/protocol.md §3) --------------------------------------------------
local OPCODES = { [1] = "HELLO", [2] = "TOKEN", [3] = "RECONCILE", [4] = "BYE" }
local PHASES = { [1] = "DISCOVER", [2] = "RECONCILE", [3] = "LIVE" }
local STATES = {
    [0] = "IDLE", [1] = "TENTATIVE", [2] = "REFLECTING",
    [3] = "COMMITTED", [4] = "ABORTED", [5] = "INDEFINITE",
}
local TRANSITIONS = {
    [0] = "NONE", [1] = "OFFER", [2] = "REFLECT", [3] = "COMMIT", [4] = "FREE", [5] = "REVERSE",
}
local DIRECTIONS = {
    [0] = "out: from this record's sender to its receiver",
    [1] = "in: towards this record's sender (the peer's transfer)",
}
local BEAT_SIZES = { [0] = 1, [1] = 4, [2] = 16, [3] = 64 }

-- Fields ------------------------------------------------------------------------------
local f = {
    slice = ProtoField.bytes("oae.slice", "Slice"),
    version = ProtoField.uint8("oae.version", "Version", base.DEC, nil, 0xF0),
    opcode = ProtoField.uint8("oae.opcode", "Opcode", base.DEC, OPCODES, 0x0F),
    phase = ProtoField.uint8("oae.phase", "Link phase", base.DEC, PHASES),
    state = ProtoField.uint8("oae.state", "AIT state", base.DEC, STATES),
    trans_dir = ProtoField.uint8("oae.trans_dir", "Transition/direction", base.HEX),
    direction = ProtoField.uint8("oae.direction", "Direction", base.DEC, DIRECTIONS, 0x80),
    transition = ProtoField.uint8("oae.transition", "Transition", base.DEC, TRANSITIONS, 0x7F),
    peer_half = ProtoField.bytes("oae.peer_half", "Peer half (reflected)"),
    ph_version = ProtoField.uint8("oae.peer_half.version", "Version", base.DEC, nil, 0xF0),
    ph_opcode = ProtoField.uint8("oae.peer_half.opcode", "Opcode", base.DEC, OPCODES, 0x0F),
    ph_phase = ProtoField.uint8("oae.peer_half.phase", "Link phase", base.DEC, PHASES),
    ph_state = ProtoField.uint8("oae.peer_half.state", "AIT state", base.DEC, STATES),
    ph_direction = ProtoField.uint8("oae.peer_half.direction", "Direction", base.DEC,
        DIRECTIONS, 0x80),
    ph_transition = ProtoField.uint8("oae.peer_half.transition", "Transition", base.DEC,
        TRANSITIONS, 0x7F),
    tid = ProtoField.uint32("oae.tid", "Transfer id", base.DEC),
    transfer = ProtoField.uint32("oae.transfer", "Transfer", base.DEC),
    transfer_origin = ProtoField.ether("oae.transfer.origin", "Transfer sent by"),
    transfer_key = ProtoField.string("oae.transfer.key", "Transfer key (sender MAC/tid)"),
    transfer_event = ProtoField.string("oae.transfer.event", "What this frame does to it"),
    transfer_note = ProtoField.string("oae.transfer.note", "Transfers not listed"),
    transfer_first = ProtoField.framenum("oae.transfer.first", "First frame of this transfer"),
    transfer_prev = ProtoField.framenum("oae.transfer.prev", "Previous frame of this transfer"),
    transfer_next = ProtoField.framenum("oae.transfer.next", "Next frame of this transfer"),
    link = ProtoField.string("oae.link", "Link (MAC pair)"),
    epoch = ProtoField.uint32("oae.epoch", "Epoch", base.DEC),
    seq = ProtoField.uint32("oae.seq", "Sequence number", base.DEC),
    nonce = ProtoField.uint32("oae.nonce", "Session nonce", base.HEX),
    commit_upto = ProtoField.uint32("oae.commit_upto", "Committed up to", base.DEC),
    held_upto = ProtoField.uint32("oae.held_upto", "Held up to", base.DEC),
    delivered_upto = ProtoField.uint32("oae.delivered_upto", "Delivered up to", base.DEC),
    beat = ProtoField.uint8("oae.beat", "Beat", base.HEX),
    beat_size_code = ProtoField.uint8("oae.beat.size_code", "Beat size code", base.DEC, nil,
        0xC0),
    beat_size = ProtoField.uint8("oae.beat.size", "Beat size (records)", base.DEC),
    beat_index = ProtoField.uint8("oae.beat.index", "Beat index", base.DEC, nil, 0x3F),
    sack = ProtoField.uint8("oae.sack", "Slice acknowledgments", base.HEX),
    length = ProtoField.uint8("oae.length", "Payload length", base.DEC),
    flags = ProtoField.uint8("oae.flags", "Flags", base.HEX),
    flag_keyed = ProtoField.bool("oae.flags.keyed", "KEYED (check is a keyed MAC)", 8, nil,
        0x01),
    flag_refuse = ProtoField.bool("oae.flags.refuse", "REFUSE (backpressure)", 8, nil, 0x02),
    flag_control = ProtoField.bool("oae.flags.control", "CONTROL (epoch-layer message)", 8,
        nil, 0x04),
    flag_reserved = ProtoField.uint8("oae.flags.reserved", "Reserved", base.HEX, nil, 0xF8),
    payload = ProtoField.bytes("oae.payload", "Payload"),
    padding = ProtoField.bytes("oae.padding", "Unused payload bytes"),
    check = ProtoField.uint64("oae.check", "Check", base.HEX),
    check_status = ProtoField.string("oae.check.status", "Check status"),
    check_computed = ProtoField.uint64("oae.check.computed", "Computed check", base.HEX),
    trailing = ProtoField.bytes("oae.trailing", "Bytes past the 64-byte record"),
    error = ProtoField.string("oae.error", "Decode error"),
    error_field = ProtoField.string("oae.error.field", "Decode error field"),
    error_offset = ProtoField.uint32("oae.error.offset", "Decode error frame offset", base.DEC),
}
local field_list = {}
for _, v in pairs(f) do field_list[#field_list + 1] = v end
oae.fields = field_list

local e = {
    malformed = ProtoExpert.new("oae.malformed", "Malformed oae frame", expert.group.MALFORMED,
        expert.severity.ERROR),
    bad_check = ProtoExpert.new("oae.check.bad", "Bad integrity check", expert.group.CHECKSUM,
        expert.severity.ERROR),
    unverified = ProtoExpert.new("oae.check.unverified",
        "Keyed check not verified (no link key set in the oae preferences)",
        expert.group.CHECKSUM, expert.severity.NOTE),
}
oae.experts = { e.malformed, e.bad_check, e.unverified }

-- Preferences ---------------------------------------------------------------------------
oae.prefs.ethertype = Pref.string("EtherType", "0x88B5",
    "EtherType carrying oae records, hex (0x88B5) or decimal; default 0x88B5 (IEEE local "
        .. "experimental 1)")
oae.prefs.key = Pref.string("Link key (hex)", "",
    "16-byte SipHash-2-4 link key as 32 hex digits; when set, KEYED records are verified and "
        .. "unkeyed ones are rejected, as an oae endpoint with that key does")

-- CRC32C (Castagnoli, reflected 0x82F63B78) -------------------------------------------
local band, bor, bxor, bnot = bit32.band, bit32.bor, bit32.bxor, bit32.bnot
local lshift, rshift = bit32.lshift, bit32.rshift

local CRC_TABLE = {}
for i = 0, 255 do
    local c = i
    for _ = 1, 8 do
        if band(c, 1) ~= 0 then c = bxor(rshift(c, 1), 0x82F63B78) else c = rshift(c, 1) end
    end
    CRC_TABLE[i] = c
end

local function crc32c(bytes, n)
    local c = 0xFFFFFFFF
    for i = 1, n do
        c = bxor(CRC_TABLE[band(bxor(c, bytes[i]), 0xFF)], rshift(c, 8))
    end
    return bnot(c)
end

-- SipHash-2-4 on 64-bit words held as {hi, lo} pairs of 32-bit numbers -------------------
local TWO32 = 4294967296

local function add64(a, b)
    local lo = a[2] + b[2]
    local carry = 0
    if lo >= TWO32 then lo = lo - TWO32; carry = 1 end
    return { (a[1] + b[1] + carry) % TWO32, lo }
end

local function xor64(a, b) return { bxor(a[1], b[1]), bxor(a[2], b[2]) } end

local function rotl64(a, n)
    local hi, lo = a[1], a[2]
    if n >= 32 then hi, lo = lo, hi; n = n - 32 end
    if n == 0 then return { hi, lo } end
    return { bor(lshift(hi, n), rshift(lo, 32 - n)), bor(lshift(lo, n), rshift(hi, 32 - n)) }
end

local function le64(bytes, i)  -- the little-endian 64-bit word at bytes[i..i+7]
    local lo = bytes[i] + bytes[i + 1] * 0x100 + bytes[i + 2] * 0x10000 + bytes[i + 3] * 0x1000000
    local hi = bytes[i + 4] + bytes[i + 5] * 0x100 + bytes[i + 6] * 0x10000
        + bytes[i + 7] * 0x1000000
    return { hi, lo }
end

local function sipround(v)
    v[1] = add64(v[1], v[2]); v[2] = rotl64(v[2], 13); v[2] = xor64(v[2], v[1])
    v[1] = rotl64(v[1], 32)
    v[3] = add64(v[3], v[4]); v[4] = rotl64(v[4], 16); v[4] = xor64(v[4], v[3])
    v[1] = add64(v[1], v[4]); v[4] = rotl64(v[4], 21); v[4] = xor64(v[4], v[1])
    v[3] = add64(v[3], v[2]); v[2] = rotl64(v[2], 17); v[2] = xor64(v[2], v[3])
    v[3] = rotl64(v[3], 32)
end

-- SipHash-2-4 of bytes[1..n] with the 16 key bytes; returns {hi, lo} of the 64-bit result.
local function siphash24(key, bytes, n)
    local k0, k1 = le64(key, 1), le64(key, 9)
    local v = {
        xor64(k0, { 0x736f6d65, 0x70736575 }), xor64(k1, { 0x646f7261, 0x6e646f6d }),
        xor64(k0, { 0x6c796765, 0x6e657261 }), xor64(k1, { 0x74656462, 0x79746573 }),
    }
    local full = n - n % 8
    for i = 1, full, 8 do
        local m = le64(bytes, i)
        v[4] = xor64(v[4], m); sipround(v); sipround(v); v[1] = xor64(v[1], m)
    end
    local last = { 0, 0, 0, 0, 0, 0, 0, 0 }
    for j = 1, n % 8 do last[j] = bytes[full + j] end
    last[8] = n % 256
    local m = le64(last, 1)
    v[4] = xor64(v[4], m); sipround(v); sipround(v); v[1] = xor64(v[1], m)
    v[3] = xor64(v[3], { 0, 0xFF })
    sipround(v); sipround(v); sipround(v); sipround(v)
    return xor64(xor64(v[1], v[2]), xor64(v[3], v[4]))
end

local function parse_key(text)
    if text == nil or text == "" then return nil end
    local hex = text:gsub("[%s:]", "")
    if #hex ~= 32 or hex:find("[^0-9a-fA-F]") then return nil end
    local key = {}
    for i = 1, 16 do key[i] = tonumber(hex:sub(2 * i - 1, 2 * i), 16) end
    return key
end

-- Present when the frame came through 802.1Q/802.1ad tags (one value per tag).
local vlan_ok, vlan_etype = pcall(Field.new, "vlan.etype")
if not vlan_ok then vlan_etype = nil end

-- Registration (re-done when the EtherType preference changes) -------------------------
local ethertype_table = DissectorTable.get("ethertype")
local registered_ethertype = nil

local function register_ethertype()
    local wanted = tonumber(oae.prefs.ethertype)
    if wanted == nil or wanted < 0x0600 or wanted > 0xFFFF or wanted % 1 ~= 0 then
        report_failure("oae: EtherType preference '" .. tostring(oae.prefs.ethertype)
            .. "' is not a number in 0x0600-0xFFFF; keeping "
            .. string.format("0x%04X", registered_ethertype or DEFAULT_ETHERTYPE))
        wanted = registered_ethertype or DEFAULT_ETHERTYPE
    end
    if registered_ethertype == wanted then return end
    if registered_ethertype ~= nil then ethertype_table:remove(registered_ethertype, oae) end
    registered_ethertype = wanted
    ethertype_table:add(registered_ethertype, oae)
end

local link_key = nil
function oae.prefs_changed()
    register_ethertype()
    link_key = parse_key(oae.prefs.key)
    if link_key == nil and oae.prefs.key ~= "" then
        report_failure("oae: link key preference is not 32 hex digits (16 bytes); keyed "
            .. "checks stay unverified")
    end
end

-- Dissection ------------------------------------------------------------------------------
local SLICE_NAMES = {
    [0] = "context: my half + reflected peer half",
    [1] = "transfer id, epoch",
    [2] = "session: seq, nonce",
    [3] = "registers: committed, held",
    [4] = "registers: delivered; beat, sack, length, flags",
    [5] = "payload bytes 0-7",
    [6] = "payload bytes 8-15",
    [7] = "integrity check",
}

local function name_of(tbl, v)
    return tbl[v] or ("invalid(" .. v .. ")")
end

-- Frame bytes 14.. as a 1-based array of numbers (only the record; at most 64).
local function record_bytes(tvb, n)
    local bytes = {}
    for i = 0, n - 1 do bytes[i + 1] = tvb(i, 1):uint() end
    return bytes
end

local function be32(bytes, i)
    return ((bytes[i] * 256 + bytes[i + 1]) * 256 + bytes[i + 2]) * 256 + bytes[i + 3]
end

-- The first failure, in the order of docs/protocol.md §4: code, field, frame offset and
-- the check status (good / bad / unverified-keyed / nil if not reached).
-- `n` is the record's length on the wire, `tag_len` the bytes of VLAN tags before it (v1
-- has no VLAN support: a tagged frame is rejected as ETHERTYPE, as the codecs do).
local function validate(b, n, tag_len, key)
    local frame_len = ETH_HLEN + tag_len + n
    if frame_len < FRAME_LEN then return "TRUNCATED", "frame", frame_len, nil end
    if frame_len > FRAME_LEN then return "OVERSIZED", "frame", FRAME_LEN, nil end
    if tag_len > 0 then return "ETHERTYPE", "ethertype", 12, nil end
    if #b < RECORD_LEN then return nil end  -- snapped by the capture: nothing to judge by
    if rshift(b[1], 4) ~= 1 then return "VERSION", "version", ETH_HLEN, nil end
    local flags = b[40]
    local status, computed
    if band(flags, 0x01) ~= 0 then
        if key == nil then
            status = "unverified-keyed"
        else
            local h = siphash24(key, b, 56)
            computed = UInt64.new(h[2], h[1])
            if h[1] == be32(b, 57) and h[2] == be32(b, 61) then status = "good" else status = "bad" end
        end
    else
        local crc = crc32c(b, 56)
        computed = UInt64.new(crc, 0)
        if crc == be32(b, 61) and be32(b, 57) == 0 then status = "good" else status = "bad" end
    end
    -- Without a key a keyed check cannot be judged: shown as unverified, not as an error
    -- (an endpoint without a key would reject it; a viewer should still show the fields).
    if status == "bad" or (key ~= nil and band(flags, 0x01) == 0) then
        return "CHECK", "check", ETH_HLEN + 56, status, computed
    end
    local fail = function(c, fld, off) return c, fld, ETH_HLEN + off, status, computed end
    local op = band(b[1], 0x0F)
    if op < 1 or op > 4 then return fail("OPCODE", "opcode", 0) end
    if b[2] < 1 or b[2] > 3 then return fail("PHASE", "phase", 1) end
    if b[3] > 5 then return fail("STATE", "state", 2) end
    if band(b[4], 0x7F) > 5 then return fail("TRANSITION", "transition", 3) end
    if be32(b, 17) == 0 then return fail("SEQ", "seq", 16) end
    if be32(b, 21) == 0 then return fail("NONCE", "nonce", 20) end
    if band(b[37], 0x3F) >= BEAT_SIZES[rshift(b[37], 6)] then return fail("BEAT", "beat", 36) end
    if b[39] > PAYLOAD_MAX then return fail("LENGTH", "length", 38) end
    if band(flags, 0xF8) ~= 0 then return fail("FLAGS", "flags", 39) end
    for i = b[39], PAYLOAD_MAX - 1 do
        if b[41 + i] ~= 0 then return fail("PADDING", "payload", 40 + i) end
    end
    return nil, nil, nil, status, computed
end

-- Transfer tracking (first pass, in frame order; the results are kept per frame) ------
-- A transfer is (who sent it, tid), so transfer 5 of A->B and transfer 5 of B->A stay
-- apart. A frame concerns a transfer when it names it (`tid`; any frame), or, if it is a
-- frame an endpoint accepts, when one of its cumulative registers newly covers it:
-- `commit_upto` (the sender's own transfers: COMMITTED), `held_upto` (the peer's: held and
-- reflected, REFLECTING), `delivered_upto` (the peer's: delivered, the FREE signal). The
-- link engine settles most transfers through these registers rather than through
-- per-record transitions, so this is how one follows a transfer from OFFER to FREE.
local MAX_EVENTS = 64  -- transfers listed per register and frame; a larger jump is summarised
local REGISTERS = {
    { off = 24, side = "src", what = "committed (COMMITTED at its sender)" },
    { off = 28, side = "dst", what = "held (REFLECTING: held by its receiver)" },
    { off = 32, side = "dst", what = "delivered (FREE: delivered by its receiver)" },
}
local transfer_frames = {}  -- transfer key -> ascending frame numbers
local last_registers = {}  -- "src>dst" -> the registers of the last accepted frame
local frame_events = {}  -- frame number -> { events = {...}, notes = {...} }

function oae.init()
    transfer_frames, last_registers, frame_events = {}, {}, {}
end

local function transfer_key(side_mac, tid) return side_mac .. "/" .. tid end

-- The transfers this frame concerns, as {side = "src"|"dst", tid, off, what}.
local function compute_events(number, macs, b, tid, valid, have_regs)
    local events, notes = {}, {}
    if tid ~= 0 then
        local outward = rshift(b[4], 7) == 0
        events[1] = { side = outward and "src" or "dst", tid = tid, off = 8,
            what = name_of(TRANSITIONS, band(b[4], 0x7F)) .. " (" .. name_of(STATES, b[3]) .. ")" }
    end
    if valid and have_regs then
        local dir = macs.src .. ">" .. macs.dst
        local last = last_registers[dir]
        local now = {}
        for i, reg in ipairs(REGISTERS) do now[i] = be32(b, reg.off + 1) end
        last_registers[dir] = now
        for i, reg in ipairs(REGISTERS) do
            if last ~= nil and now[i] > last[i] then  -- a new baseline (or a step back) is no event
                local stop = math.min(now[i], last[i] + MAX_EVENTS)
                for t = last[i] + 1, stop do
                    events[#events + 1] = { side = reg.side, tid = t, off = reg.off, what = reg.what }
                end
                if now[i] > stop then
                    notes[#notes + 1] = string.format("%d more transfers %s (%d-%d)",
                        now[i] - stop, reg.what, stop + 1, now[i])
                end
            end
        end
    end
    for _, ev in ipairs(events) do
        local key = transfer_key(macs[ev.side], ev.tid)
        local list = transfer_frames[key]
        if list == nil then
            list = {}
            transfer_frames[key] = list
        end
        if #list == 0 or list[#list] < number then list[#list + 1] = number end
    end
    return { events = events, notes = notes }
end

local function neighbours(list, number)
    local prev, nxt = nil, nil
    for _, n in ipairs(list) do
        if n < number then prev = n elseif n > number and nxt == nil then nxt = n end
    end
    return prev, nxt
end

local function add_half(tree, field, tvb, off, names)
    -- one 4-byte context half: ver/op, phase, state, trans/dir
    tree:add(names.version, tvb(off, 1))
    tree:add(names.opcode, tvb(off, 1))
    tree:add(names.phase, tvb(off + 1, 1))
    tree:add(names.state, tvb(off + 2, 1))
    local td = field and tree:add(field, tvb(off + 3, 1)) or tree
    td:add(names.direction, tvb(off + 3, 1))
    td:add(names.transition, tvb(off + 3, 1))
end

local MY_HALF = {
    version = f.version, opcode = f.opcode, phase = f.phase, state = f.state,
    direction = f.direction, transition = f.transition,
}
local PEER_HALF = {
    version = f.ph_version, opcode = f.ph_opcode, phase = f.ph_phase, state = f.ph_state,
    direction = f.ph_direction, transition = f.ph_transition,
}

local function mac_string(addr)
    local text = addr and tostring(addr) or ""
    if text == "" or text == "NONE" then return "?" end  -- e.g. no destination in SLL
    return text
end

function oae.dissector(tvb, pinfo, tree)
    local n = tvb:len()
    local captured = math.min(n, RECORD_LEN)
    pinfo.cols.protocol = "OAE"
    local root = tree:add(oae, tvb(0, captured))
    local b = record_bytes(tvb, captured)
    if tvb:reported_length_remaining() > n then
        -- snapped by the capture: judge the frame by its length on the wire
        n = tvb:reported_length_remaining()
    end
    local tag_len = 0
    if vlan_etype ~= nil then tag_len = 4 * #{ vlan_etype() } end
    local code, efield, eoffset, status, computed = validate(b, n, tag_len, link_key)
    local snapped = code == nil and captured < RECORD_LEN  -- cut by the capture, not on the wire
    if snapped then status, computed = nil, nil end

    local function have(off, size) return off + size <= captured end

    for s = 0, 7 do
        local off = s * 8
        if not have(off, 1) then break end
        local size = math.min(8, captured - off)
        local st = root:add(f.slice, tvb(off, size))
        st:set_text(string.format("Slice %d (record bytes %d-%d): %s", s, off, off + 7,
            SLICE_NAMES[s]))
        if s == 0 then
            if have(0, 4) then
                add_half(st, f.trans_dir, tvb, 0, MY_HALF)
            end
            if have(4, 4) then
                local ph = st:add(f.peer_half, tvb(4, 4))
                add_half(ph, nil, tvb, 4, PEER_HALF)
            end
        elseif s == 1 then
            if have(8, 4) then st:add(f.tid, tvb(8, 4)) end
            if have(12, 4) then st:add(f.epoch, tvb(12, 4)) end
        elseif s == 2 then
            if have(16, 4) then st:add(f.seq, tvb(16, 4)) end
            if have(20, 4) then st:add(f.nonce, tvb(20, 4)) end
        elseif s == 3 then
            if have(24, 4) then st:add(f.commit_upto, tvb(24, 4)) end
            if have(28, 4) then st:add(f.held_upto, tvb(28, 4)) end
        elseif s == 4 then
            if have(32, 4) then st:add(f.delivered_upto, tvb(32, 4)) end
            if have(36, 1) then
                local bt = st:add(f.beat, tvb(36, 1))
                bt:add(f.beat_size_code, tvb(36, 1))
                bt:add(f.beat_size, tvb(36, 1), BEAT_SIZES[rshift(b[37], 6)])
                bt:add(f.beat_index, tvb(36, 1))
            end
            if have(37, 1) then st:add(f.sack, tvb(37, 1)) end
            if have(38, 1) then st:add(f.length, tvb(38, 1)) end
            if have(39, 1) then
                local ft = st:add(f.flags, tvb(39, 1))
                ft:add(f.flag_keyed, tvb(39, 1))
                ft:add(f.flag_refuse, tvb(39, 1))
                ft:add(f.flag_control, tvb(39, 1))
                ft:add(f.flag_reserved, tvb(39, 1))
            end
        elseif s == 5 and have(39, 1) then
            local used = math.min(b[39], PAYLOAD_MAX, captured - 40)
            if used > 0 then st:add(f.payload, tvb(40, used)) end
            local pad_end = math.min(48, captured)
            if 40 + used < pad_end then st:add(f.padding, tvb(40 + used, pad_end - 40 - used)) end
        elseif s == 6 and have(39, 1) then
            local used_end = 40 + math.min(b[39], PAYLOAD_MAX)
            local pad_start = math.max(48, used_end)
            local pad_end = math.min(56, captured)
            if pad_start < pad_end then st:add(f.padding, tvb(pad_start, pad_end - pad_start)) end
        elseif s == 7 and have(56, 8) then
            st:add(f.check, tvb(56, 8))
            if status then
                local si = st:add(f.check_status, tvb(56, 8), status)
                si:set_generated()
                if computed then st:add(f.check_computed, tvb(56, 8), computed):set_generated() end
                if status == "bad" then
                    si:add_proto_expert_info(e.bad_check)
                elseif status == "unverified-keyed" then
                    si:add_proto_expert_info(e.unverified)
                end
            end
        end
    end
    if n > RECORD_LEN and tvb:len() > RECORD_LEN then
        root:add(f.trailing, tvb(RECORD_LEN))
    end

    -- the link (MAC pair) and the transfers this frame concerns
    local src, dst = pinfo.dl_src, pinfo.dl_dst
    local macs = { src = mac_string(src), dst = mac_string(dst) }
    local addrs = { src = src, dst = dst }
    local tid = have(8, 4) and be32(b, 9) or 0
    if have(4, 1) then
        local a, z = macs.src, macs.dst
        if z < a then a, z = z, a end
        root:add(f.link, a .. " <-> " .. z):set_generated()
    end
    local tracked = frame_events[pinfo.number]
    if tracked == nil or not pinfo.visited then
        tracked = compute_events(pinfo.number, macs, b, tid, code == nil, have(32, 4))
        frame_events[pinfo.number] = tracked
    end
    for _, ev in ipairs(tracked.events) do
        local key = transfer_key(macs[ev.side], ev.tid)
        local ti = root:add(f.transfer, tvb(ev.off, 4), ev.tid)
        ti:set_generated()
        ti:set_text(string.format("Transfer %d of %s: %s", ev.tid, macs[ev.side], ev.what))
        pcall(function() ti:add(f.transfer_origin, addrs[ev.side]):set_generated() end)
        ti:add(f.transfer_key, key):set_generated()
        ti:add(f.transfer_event, ev.what):set_generated()
        local list = transfer_frames[key] or {}
        if list[1] and list[1] ~= pinfo.number then
            ti:add(f.transfer_first, list[1]):set_generated()
        end
        local prev, nxt = neighbours(list, pinfo.number)
        if prev then ti:add(f.transfer_prev, prev):set_generated() end
        if nxt then ti:add(f.transfer_next, nxt):set_generated() end
    end
    for _, note in ipairs(tracked.notes) do root:add(f.transfer_note, note):set_generated() end

    -- errors and the Info column
    local info
    if captured >= 4 then
        local arrow = rshift(b[4], 7) == 0 and "\226\134\146" or "\226\134\144"
        info = string.format("%s %s", name_of(OPCODES, band(b[1], 0x0F)), name_of(PHASES, b[2]))
        if tid ~= 0 or b[3] ~= 0 or b[4] ~= 0 then  -- a record that acts on a transfer
            info = info .. string.format(" tid=%d %s%s %s", tid,
                name_of(TRANSITIONS, band(b[4], 0x7F)), arrow, name_of(STATES, b[3]))
        end
        if captured >= 36 then
            info = info .. string.format(" commit\226\137\164%d held\226\137\164%d delivered\226\137\164%d",
                be32(b, 25), be32(b, 29), be32(b, 33))
        end
        if captured >= 20 then info = info .. string.format(" seq=%d", be32(b, 17)) end
        if captured >= 16 and be32(b, 13) ~= 0 then
            info = info .. string.format(" epoch=%d", be32(b, 13))
        end
    else
        info = "oae record"
    end
    if code then
        root:add(f.error, code):set_generated()
        root:add(f.error_field, efield):set_generated()
        root:add(f.error_offset, eoffset):set_generated()
        if code == "CHECK" then
            info = "[BAD CHECK] " .. info
            if status ~= "bad" then
                root:add_proto_expert_info(e.bad_check,
                    "Check rejected: unkeyed record while a link key is set")
            end
        else
            info = string.format("[MALFORMED %s at %d] %s", code, eoffset, info)
            root:add_proto_expert_info(e.malformed, string.format(
                "Malformed oae frame: %s (field %s, frame offset %d)", code, efield, eoffset))
        end
    elseif status == "unverified-keyed" then
        info = info .. " [keyed, not verified]"
    end
    pinfo.cols.info = info
    if code then
        root:append_text(", rejected: " .. code)
    elseif snapped then
        root:append_text(", not checked: the capture kept only part of the record (snap length)")
    else
        root:append_text(", valid")
    end
    return tvb:len()
end

register_ethertype()

package dev.sparkmoe.core.json;

import java.math.BigDecimal;
import java.math.BigInteger;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A strict RFC 8259 JSON parser and a writer, with no dependencies.
 *
 * <p>Value mapping (parse and write):
 * <ul>
 *   <li>object: {@code LinkedHashMap<String,Object>} in document order; a duplicate key is an error</li>
 *   <li>array: {@code List<Object>} ({@code ArrayList})</li>
 *   <li>string: {@code String}; unpaired surrogate escapes are rejected</li>
 *   <li>number: {@code Long} when written without fraction or exponent and within the long range, otherwise
 *       {@code Double}; a number too large for a double (1e400) is an error</li>
 *   <li>true/false: {@code Boolean}</li>
 *   <li>null: <b>Java {@code null}</b> (use {@code containsKey} to tell a JSON null from an absent key)</li>
 * </ul>
 * The writer also accepts other {@code Number}s (Integer, Float, BigInteger, BigDecimal ...), any {@code Map} with
 * String keys, any {@code Iterable}, and Java arrays. Output of {@link #write(Object, boolean)} parses back to an equal
 * value ({@code Integer} comes back as {@code Long}, {@code Float} as {@code Double}).
 *
 * <p>Whitespace is exactly space, tab, LF and CR. Nesting deeper than {@value #MAX_DEPTH} is rejected.
 */
public final class Json {
    /** Maximum nesting of arrays and objects accepted by the parser. */
    public static final int MAX_DEPTH = 512;

    private Json() {
    }

    // ------------------------------------------------------------------ parsing

    /** Parses one JSON value (any type at top level) surrounded by optional whitespace. */
    public static Object parse(String text) {
        Parser p = new Parser(text);
        p.skipWs();
        Object v = p.value(0);
        p.skipWs();
        if (p.pos < text.length()) {
            throw p.error("expected end of input after the JSON value, found " + p.describe(p.pos));
        }
        return v;
    }

    /** Parses a JSON text that must be an object. */
    @SuppressWarnings("unchecked")
    public static Map<String, Object> parseObject(String text) {
        Object v = parse(text);
        if (!(v instanceof Map)) {
            throw new JsonException("expected a JSON object at top level, got " + typeName(v));
        }
        return (Map<String, Object>) v;
    }

    private static final class Parser {
        final String s;
        int pos;

        Parser(String s) {
            this.s = s;
        }

        JsonException error(String msg) {
            return errorAt(pos, msg);
        }

        JsonException errorAt(int at, String msg) {
            int line = 1;
            int col = 1;
            for (int k = 0; k < at && k < s.length(); k++) {
                if (s.charAt(k) == '\n') {
                    line++;
                    col = 1;
                } else {
                    col++;
                }
            }
            return new JsonException(msg, line, col);
        }

        String describe(int at) {
            if (at >= s.length()) {
                return "end of input";
            }
            char c = s.charAt(at);
            if (c < 0x20 || c == 0x7F) {
                return String.format("control character U+%04X", (int) c);
            }
            return "'" + c + "'";
        }

        void skipWs() {
            while (pos < s.length()) {
                char c = s.charAt(pos);
                if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
                    pos++;
                } else {
                    break;
                }
            }
        }

        Object value(int depth) {
            if (pos >= s.length()) {
                throw error("expected a value (object, array, string, number, true, false or null), found end of input");
            }
            char c = s.charAt(pos);
            switch (c) {
                case '{': return object(depth + 1);
                case '[': return array(depth + 1);
                case '"': return string();
                case 't': literal("true"); return Boolean.TRUE;
                case 'f': literal("false"); return Boolean.FALSE;
                case 'n': literal("null"); return null;
                default:
                    if (c == '-' || (c >= '0' && c <= '9')) {
                        return number();
                    }
                    throw error("expected a value (object, array, string, number, true, false or null), found "
                            + describe(pos));
            }
        }

        void literal(String word) {
            if (!s.startsWith(word, pos)) {
                throw error("expected '" + word + "'");
            }
            pos += word.length();
        }

        Map<String, Object> object(int depth) {
            if (depth > MAX_DEPTH) {
                throw error("nesting deeper than " + MAX_DEPTH);
            }
            pos++; // '{'
            LinkedHashMap<String, Object> map = new LinkedHashMap<>();
            skipWs();
            if (pos < s.length() && s.charAt(pos) == '}') {
                pos++;
                return map;
            }
            while (true) {
                skipWs();
                if (pos >= s.length() || s.charAt(pos) != '"') {
                    throw error("expected a string key in object, found " + describe(pos));
                }
                int keyAt = pos;
                String key = string();
                skipWs();
                if (pos >= s.length() || s.charAt(pos) != ':') {
                    throw error("expected ':' after object key \"" + key + "\", found " + describe(pos));
                }
                pos++;
                skipWs();
                Object v = value(depth);
                if (map.containsKey(key)) {
                    throw errorAt(keyAt, "duplicate key \"" + key + "\" in object");
                }
                map.put(key, v);
                skipWs();
                if (pos >= s.length()) {
                    throw error("expected ',' or '}' in object, found end of input");
                }
                char c = s.charAt(pos++);
                if (c == '}') {
                    return map;
                }
                if (c != ',') {
                    pos--;
                    throw error("expected ',' or '}' in object, found " + describe(pos));
                }
            }
        }

        List<Object> array(int depth) {
            if (depth > MAX_DEPTH) {
                throw error("nesting deeper than " + MAX_DEPTH);
            }
            pos++; // '['
            List<Object> list = new ArrayList<>();
            skipWs();
            if (pos < s.length() && s.charAt(pos) == ']') {
                pos++;
                return list;
            }
            while (true) {
                skipWs();
                list.add(value(depth));
                skipWs();
                if (pos >= s.length()) {
                    throw error("expected ',' or ']' in array, found end of input");
                }
                char c = s.charAt(pos++);
                if (c == ']') {
                    return list;
                }
                if (c != ',') {
                    pos--;
                    throw error("expected ',' or ']' in array, found " + describe(pos));
                }
            }
        }

        String string() {
            pos++; // opening quote
            StringBuilder sb = null;
            int start = pos;
            while (true) {
                if (pos >= s.length()) {
                    throw error("unterminated string (expected '\"')");
                }
                char c = s.charAt(pos);
                if (c == '"') {
                    String out = sb == null ? s.substring(start, pos) : sb.append(s, start, pos).toString();
                    pos++;
                    return out;
                }
                if (c < 0x20) {
                    throw error("unescaped " + describe(pos) + " in string (escape it as \\u" + String.format("%04x", (int) c)
                            + ")");
                }
                if (c == '\\') {
                    if (sb == null) {
                        sb = new StringBuilder();
                    }
                    sb.append(s, start, pos);
                    pos++;
                    if (pos >= s.length()) {
                        throw error("unterminated escape sequence in string");
                    }
                    char e = s.charAt(pos++);
                    switch (e) {
                        case '"': sb.append('"'); break;
                        case '\\': sb.append('\\'); break;
                        case '/': sb.append('/'); break;
                        case 'b': sb.append('\b'); break;
                        case 'f': sb.append('\f'); break;
                        case 'n': sb.append('\n'); break;
                        case 'r': sb.append('\r'); break;
                        case 't': sb.append('\t'); break;
                        case 'u': {
                            int escAt = pos - 2;
                            char u = hex4();
                            if (Character.isHighSurrogate(u)) {
                                if (!s.startsWith("\\u", pos)) {
                                    throw errorAt(escAt, "unpaired high surrogate \\u" + String.format("%04x", (int) u)
                                            + " (expected a following \\uDC00-\\uDFFF escape)");
                                }
                                pos += 2;
                                char lo = hex4();
                                if (!Character.isLowSurrogate(lo)) {
                                    throw errorAt(escAt, "high surrogate \\u" + String.format("%04x", (int) u)
                                            + " followed by \\u" + String.format("%04x", (int) lo)
                                            + ", expected a low surrogate \\uDC00-\\uDFFF");
                                }
                                sb.append(u).append(lo);
                            } else if (Character.isLowSurrogate(u)) {
                                throw errorAt(escAt, "unpaired low surrogate \\u" + String.format("%04x", (int) u));
                            } else {
                                sb.append(u);
                            }
                            break;
                        }
                        default:
                            pos--;
                            throw error("invalid escape '\\" + e + "' in string (expected one of \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX)");
                    }
                    start = pos;
                    continue;
                }
                pos++;
            }
        }

        char hex4() {
            if (pos + 4 > s.length()) {
                throw error("expected 4 hex digits after \\u, found end of input");
            }
            int v = 0;
            for (int k = 0; k < 4; k++) {
                int d = Character.digit(s.charAt(pos), 16);
                if (d < 0 || s.charAt(pos) > 'f') {
                    throw error("expected a hex digit in \\u escape, found " + describe(pos));
                }
                v = v * 16 + d;
                pos++;
            }
            return (char) v;
        }

        Object number() {
            int start = pos;
            boolean integral = true;
            if (s.charAt(pos) == '-') {
                pos++;
            }
            if (pos >= s.length() || !isDigit(s.charAt(pos))) {
                throw error("expected a digit in number, found " + describe(pos));
            }
            if (s.charAt(pos) == '0') {
                pos++;
                if (pos < s.length() && isDigit(s.charAt(pos))) {
                    throw error("leading zeros are not allowed in numbers");
                }
            } else {
                while (pos < s.length() && isDigit(s.charAt(pos))) {
                    pos++;
                }
            }
            if (pos < s.length() && s.charAt(pos) == '.') {
                integral = false;
                pos++;
                if (pos >= s.length() || !isDigit(s.charAt(pos))) {
                    throw error("expected a digit after the decimal point, found " + describe(pos));
                }
                while (pos < s.length() && isDigit(s.charAt(pos))) {
                    pos++;
                }
            }
            if (pos < s.length() && (s.charAt(pos) == 'e' || s.charAt(pos) == 'E')) {
                integral = false;
                pos++;
                if (pos < s.length() && (s.charAt(pos) == '+' || s.charAt(pos) == '-')) {
                    pos++;
                }
                if (pos >= s.length() || !isDigit(s.charAt(pos))) {
                    throw error("expected a digit in the exponent, found " + describe(pos));
                }
                while (pos < s.length() && isDigit(s.charAt(pos))) {
                    pos++;
                }
            }
            String lit = s.substring(start, pos);
            if (integral) {
                try {
                    return Long.parseLong(lit);
                } catch (NumberFormatException tooBig) {
                    // falls through to double
                }
            }
            double d = Double.parseDouble(lit);
            if (Double.isInfinite(d)) {
                throw errorAt(start, "number " + lit + " is out of the range of a double");
            }
            return d;
        }

        static boolean isDigit(char c) {
            return c >= '0' && c <= '9';
        }
    }

    // ------------------------------------------------------------------ writing

    /**
     * Writes a value as JSON. Compact output has no whitespace at all ({@code {"a":[1,2]}}, as serde_json writes);
     * pretty output indents by two spaces with {@code ": "} after keys (as Python's {@code json.dumps(indent=2)}).
     * Strings escape {@code "}, {@code \}, and control characters below U+0020 (as \b \f \n \r \t or a backslash-u00xx escape);
     * other characters are written as they are. Doubles are written in Python's {@code repr} style
     * ({@code 1e-06}, {@code 10000.0}); NaN and infinities are rejected.
     */
    public static String write(Object value, boolean pretty) {
        StringBuilder sb = new StringBuilder();
        writeValue(sb, value, pretty, 0);
        return sb.toString();
    }

    private static void writeValue(StringBuilder sb, Object v, boolean pretty, int indent) {
        if (v == null) {
            sb.append("null");
        } else if (v instanceof String) {
            writeString(sb, (String) v);
        } else if (v instanceof Boolean) {
            sb.append(((Boolean) v).booleanValue() ? "true" : "false");
        } else if (v instanceof Long || v instanceof Integer || v instanceof Short || v instanceof Byte
                || v instanceof BigInteger) {
            sb.append(v.toString());
        } else if (v instanceof Double || v instanceof Float) {
            sb.append(formatDouble(((Number) v).doubleValue()));
        } else if (v instanceof BigDecimal) {
            sb.append(((BigDecimal) v).toString());
        } else if (v instanceof Map) {
            Map<?, ?> m = (Map<?, ?>) v;
            if (m.isEmpty()) {
                sb.append("{}");
                return;
            }
            sb.append('{');
            boolean first = true;
            for (Map.Entry<?, ?> e : m.entrySet()) {
                if (!(e.getKey() instanceof String)) {
                    throw new JsonException("object keys must be strings, got " + typeName(e.getKey()) + " "
                            + e.getKey());
                }
                if (!first) {
                    sb.append(',');
                }
                first = false;
                newline(sb, pretty, indent + 1);
                writeString(sb, (String) e.getKey());
                sb.append(pretty ? ": " : ":");
                writeValue(sb, e.getValue(), pretty, indent + 1);
            }
            newline(sb, pretty, indent);
            sb.append('}');
        } else if (v instanceof Iterable || v.getClass().isArray()) {
            List<Object> items = asList(v);
            if (items.isEmpty()) {
                sb.append("[]");
                return;
            }
            sb.append('[');
            boolean first = true;
            for (Object item : items) {
                if (!first) {
                    sb.append(',');
                }
                first = false;
                newline(sb, pretty, indent + 1);
                writeValue(sb, item, pretty, indent + 1);
            }
            newline(sb, pretty, indent);
            sb.append(']');
        } else {
            throw new JsonException("cannot write a " + typeName(v) + " as JSON (supported: Map, Iterable, array, String,"
                    + " Number, Boolean, null)");
        }
    }

    private static List<Object> asList(Object v) {
        List<Object> out = new ArrayList<>();
        if (v instanceof Iterable) {
            for (Object o : (Iterable<?>) v) {
                out.add(o);
            }
        } else if (v instanceof Object[]) {
            Collections.addAll(out, (Object[]) v);
        } else if (v instanceof int[]) {
            for (int x : (int[]) v) {
                out.add(x);
            }
        } else if (v instanceof long[]) {
            for (long x : (long[]) v) {
                out.add(x);
            }
        } else if (v instanceof double[]) {
            for (double x : (double[]) v) {
                out.add(x);
            }
        } else if (v instanceof float[]) {
            for (float x : (float[]) v) {
                out.add(x);
            }
        } else if (v instanceof boolean[]) {
            for (boolean x : (boolean[]) v) {
                out.add(x);
            }
        } else {
            throw new JsonException("cannot write an array of " + v.getClass().getComponentType() + " as JSON");
        }
        return out;
    }

    private static void newline(StringBuilder sb, boolean pretty, int indent) {
        if (pretty) {
            sb.append('\n');
            for (int k = 0; k < indent; k++) {
                sb.append("  ");
            }
        }
    }

    private static final char[] HEX = "0123456789abcdef".toCharArray();

    private static void writeString(StringBuilder sb, String s) {
        sb.append('"');
        for (int k = 0; k < s.length(); k++) {
            char c = s.charAt(k);
            switch (c) {
                case '"': sb.append("\\\""); break;
                case '\\': sb.append("\\\\"); break;
                case '\b': sb.append("\\b"); break;
                case '\f': sb.append("\\f"); break;
                case '\n': sb.append("\\n"); break;
                case '\r': sb.append("\\r"); break;
                case '\t': sb.append("\\t"); break;
                default:
                    if (c < 0x20) {
                        sb.append("\\u00").append(HEX[c >> 4]).append(HEX[c & 0xF]);
                    } else {
                        sb.append(c);
                    }
            }
        }
        sb.append('"');
    }

    /**
     * Formats a finite double the way Python's {@code repr} does: plain notation with at least one fractional digit
     * when the decimal exponent is in [-4, 16), otherwise scientific with a signed, at least two-digit exponent
     * ({@code 1e-06}, {@code 1.5e+20}). The digits are Java's {@code Double.toString} digits, so the text always
     * parses back to the same double.
     */
    public static String formatDouble(double d) {
        if (Double.isNaN(d) || Double.isInfinite(d)) {
            throw new JsonException("cannot write " + d + " as JSON: NaN and infinities are not JSON numbers");
        }
        if (d == 0) {
            return (Double.doubleToRawLongBits(d) < 0) ? "-0.0" : "0.0";
        }
        BigDecimal bd = new BigDecimal(Double.toString(d)).stripTrailingZeros();
        String digits = bd.unscaledValue().abs().toString();
        int exp = digits.length() - 1 - bd.scale(); // decimal exponent of the first digit
        String sign = d < 0 ? "-" : "";
        if (exp >= -4 && exp < 16) {
            String plain = bd.abs().toPlainString();
            if (plain.indexOf('.') < 0) {
                plain += ".0";
            }
            return sign + plain;
        }
        String mant = digits.length() == 1 ? digits : digits.charAt(0) + "." + digits.substring(1);
        String e = Integer.toString(Math.abs(exp));
        if (e.length() < 2) {
            e = "0" + e;
        }
        return sign + mant + "e" + (exp < 0 ? "-" : "+") + e;
    }

    // ------------------------------------------------------------------ typed accessors

    /** A short name of a value's JSON type for error messages. */
    public static String typeName(Object v) {
        if (v == null) {
            return "null";
        }
        if (v instanceof Map) {
            return "object";
        }
        if (v instanceof List) {
            return "array";
        }
        if (v instanceof String) {
            return "string";
        }
        if (v instanceof Boolean) {
            return "boolean";
        }
        if (v instanceof Long || v instanceof Integer) {
            return "integer";
        }
        if (v instanceof Number) {
            return "number";
        }
        return v.getClass().getSimpleName();
    }

    private static String show(Object v) {
        return v instanceof String ? "\"" + v + "\"" : String.valueOf(v);
    }

    private static JsonException wrongType(String key, String expected, Object v) {
        return new JsonException("key '" + key + "' must be " + expected + ", got " + typeName(v) + " " + show(v));
    }

    /** The long at {@code key}; {@code dflt} when the key is absent or JSON null. */
    public static long getLong(Map<String, ?> map, String key, long dflt) {
        Object v = map.get(key);
        if (v == null) {
            return dflt;
        }
        if (!(v instanceof Long || v instanceof Integer)) {
            throw wrongType(key, "an integer", v);
        }
        return ((Number) v).longValue();
    }

    /** The int at {@code key}; {@code dflt} when the key is absent or JSON null. */
    public static int getInt(Map<String, ?> map, String key, int dflt) {
        long v = getLong(map, key, dflt);
        if (v < Integer.MIN_VALUE || v > Integer.MAX_VALUE) {
            throw new JsonException("key '" + key + "' = " + v + " does not fit a 32-bit int");
        }
        return (int) v;
    }

    /** The number at {@code key} as a double (integers accepted); {@code dflt} when absent or JSON null. */
    public static double getDouble(Map<String, ?> map, String key, double dflt) {
        Object v = map.get(key);
        if (v == null) {
            return dflt;
        }
        if (!(v instanceof Number)) {
            throw wrongType(key, "a number", v);
        }
        return ((Number) v).doubleValue();
    }

    /** The boolean at {@code key}; {@code dflt} when absent or JSON null. */
    public static boolean getBoolean(Map<String, ?> map, String key, boolean dflt) {
        Object v = map.get(key);
        if (v == null) {
            return dflt;
        }
        if (!(v instanceof Boolean)) {
            throw wrongType(key, "a boolean", v);
        }
        return (Boolean) v;
    }

    /** The string at {@code key}; {@code dflt} when absent or JSON null. */
    public static String getString(Map<String, ?> map, String key, String dflt) {
        Object v = map.get(key);
        if (v == null) {
            return dflt;
        }
        if (!(v instanceof String)) {
            throw wrongType(key, "a string", v);
        }
        return (String) v;
    }

    /** The object at {@code key}; null when absent or JSON null. */
    @SuppressWarnings("unchecked")
    public static Map<String, Object> getObject(Map<String, ?> map, String key) {
        Object v = map.get(key);
        if (v == null) {
            return null;
        }
        if (!(v instanceof Map)) {
            throw wrongType(key, "an object", v);
        }
        return (Map<String, Object>) v;
    }

    /** The array at {@code key}; null when absent or JSON null. */
    @SuppressWarnings("unchecked")
    public static List<Object> getList(Map<String, ?> map, String key) {
        Object v = map.get(key);
        if (v == null) {
            return null;
        }
        if (!(v instanceof List)) {
            throw wrongType(key, "an array", v);
        }
        return (List<Object>) v;
    }
}

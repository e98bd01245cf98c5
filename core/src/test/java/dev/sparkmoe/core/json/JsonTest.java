package dev.sparkmoe.core.json;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

class JsonTest {

    @Test
    void parsesAllValueTypesAndKeepsKeyOrder() {
        Map<String, Object> m = Json.parseObject(
                " {\"z\": 1, \"a\": [true, false, null], \"m\": {\"x\": \"y\"}, \"d\": 1.5, \"e\": 1e3, \"n\": -0} ");
        assertEquals(List.of("z", "a", "m", "d", "e", "n"), List.copyOf(m.keySet()));
        assertEquals(1L, m.get("z"));
        assertEquals(Arrays.asList(true, false, null), m.get("a"));
        assertEquals(Map.of("x", "y"), m.get("m"));
        assertEquals(1.5, m.get("d"));
        assertEquals(1000.0, m.get("e"));
        assertEquals(0L, m.get("n"));
        assertTrue(m.get("z") instanceof Long);
        assertTrue(m instanceof LinkedHashMap);
    }

    @Test
    void numbersLongOrDouble() {
        assertEquals(Long.MAX_VALUE, Json.parse("9223372036854775807"));
        assertEquals(Long.MIN_VALUE, Json.parse("-9223372036854775808"));
        assertEquals(9223372036854775808.0, Json.parse("9223372036854775808"));
        assertEquals(1.0, Json.parse("1.0"));
        assertEquals(1e-6, Json.parse("1e-06"));
        assertEquals(-2.5E10, Json.parse("-2.5E+10"));
    }

    @Test
    void strings() {
        assertEquals("a\"b\\c/d\b\f\n\r\t\u00e9\uD83D\uDE00",
                Json.parse("\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u00E9\\ud83d\\ude00\""));
        assertEquals("h\u00e9llo \uD83D\uDE00", Json.parse("\"h\u00e9llo \uD83D\uDE00\""));
    }

    @Test
    void nullIsJavaNull() {
        assertNull(Json.parse("null"));
        Map<String, Object> m = Json.parseObject("{\"a\":null}");
        assertTrue(m.containsKey("a"));
        assertNull(m.get("a"));
    }

    private static JsonException bad(String text) {
        return assertThrows(JsonException.class, () -> Json.parse(text), text);
    }

    @Test
    void rejectsInvalidTextWithPosition() {
        JsonException e = bad("{\n  \"a\": 1,\n  \"a\": 2\n}");
        assertTrue(e.getMessage().contains("duplicate key \"a\""), e.getMessage());
        assertEquals(3, e.line());
        assertEquals(3, e.column());

        e = bad("{\"a\" 1}");
        assertTrue(e.getMessage().contains("expected ':'"), e.getMessage());
        assertEquals(1, e.line());
        assertEquals(6, e.column());

        assertTrue(bad("[1,]").getMessage().contains("expected a value"));
        assertTrue(bad("{\"a\":1,}").getMessage().contains("expected a string key"));
        assertTrue(bad("[1 2]").getMessage().contains("expected ',' or ']'"));
        assertTrue(bad("{\"a\":1 \"b\":2}").getMessage().contains("expected ',' or '}'"));
        assertTrue(bad("01").getMessage().contains("leading zeros"));
        assertTrue(bad("1.").getMessage().contains("after the decimal point"));
        assertTrue(bad(".5").getMessage().contains("expected a value"));
        assertTrue(bad("1e").getMessage().contains("exponent"));
        assertTrue(bad("-").getMessage().contains("expected a digit"));
        assertTrue(bad("+1").getMessage().contains("expected a value"));
        assertTrue(bad("1e400").getMessage().contains("out of the range"));
        assertTrue(bad("NaN").getMessage().contains("expected a value"));
        assertTrue(bad("tru").getMessage().contains("expected 'true'"));
        assertTrue(bad("\"abc").getMessage().contains("unterminated string"));
        assertTrue(bad("\"a\tb\"").getMessage().contains("control character U+0009"));
        assertTrue(bad("\"\\x\"").getMessage().contains("invalid escape"));
        assertTrue(bad("\"\\u12G4\"").getMessage().contains("hex digit"));
        assertTrue(bad("\"\\ud83d\"").getMessage().contains("unpaired high surrogate"));
        assertTrue(bad("\"\\ude00\"").getMessage().contains("unpaired low surrogate"));
        assertTrue(bad("{} {}").getMessage().contains("expected end of input"));
        assertTrue(bad("").getMessage().contains("found end of input"));
        assertTrue(bad("\u00a0{}").getMessage().contains("expected a value"));
        assertTrue(bad("{'a':1}").getMessage().contains("expected a string key"));
        assertTrue(bad("[".repeat(Json.MAX_DEPTH + 1)).getMessage().contains("nesting deeper"));
    }

    @Test
    void writerCompactAndPretty() {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("b", 1);
        m.put("a", Arrays.asList(1L, 2.5, "x\"\n\u0001", null, true));
        m.put("e", List.of());
        m.put("o", Map.of());
        assertEquals("{\"b\":1,\"a\":[1,2.5,\"x\\\"\\n\\u0001\",null,true],\"e\":[],\"o\":{}}", Json.write(m, false));
        assertEquals("{\n  \"b\": 1,\n  \"a\": [\n    1,\n    2.5,\n    \"x\\\"\\n\\u0001\",\n    null,\n    true\n  ],\n"
                + "  \"e\": [],\n  \"o\": {}\n}", Json.write(m, true));
    }

    @Test
    void doublesInPythonReprStyle() {
        assertEquals("1e-06", Json.formatDouble(1e-6));
        assertEquals("10000.0", Json.formatDouble(10000.0));
        assertEquals("0.001", Json.formatDouble(0.001));
        assertEquals("0.0001", Json.formatDouble(1e-4));
        assertEquals("1e-05", Json.formatDouble(1e-5));
        assertEquals("1000000.0", Json.formatDouble(1e6));
        assertEquals("1e+16", Json.formatDouble(1e16));
        assertEquals("1.5e+20", Json.formatDouble(1.5e20));
        assertEquals("-2.5", Json.formatDouble(-2.5));
        assertEquals("0.0", Json.formatDouble(0.0));
        assertEquals("-0.0", Json.formatDouble(-0.0));
        assertEquals("1.7976931348623157e+308", Json.formatDouble(Double.MAX_VALUE));
        assertThrows(JsonException.class, () -> Json.write(Double.NaN, false));
        assertThrows(JsonException.class, () -> Json.write(Double.POSITIVE_INFINITY, false));
        assertThrows(JsonException.class, () -> Json.write(Map.of(1, 2), false));
        assertThrows(JsonException.class, () -> Json.write(new Object(), false));
    }

    @Test
    void roundTrips() {
        String text = "{\"s\":\"\u00e9\\u0000\\t\uD83D\uDE00\",\"n\":[0,-1,9223372036854775807,1.25,-3e-300,1e+300,0.1],"
                + "\"o\":{\"k\":{\"deep\":[[],[{}]]}},\"t\":true,\"f\":false,\"z\":null}";
        Object v = Json.parse(text);
        assertEquals(v, Json.parse(Json.write(v, false)));
        assertEquals(v, Json.parse(Json.write(v, true)));
        assertEquals(Json.write(v, false), Json.write(Json.parse(Json.write(v, true)), false));
        double[] samples = {0.1, 1.0 / 3, 2.0 / 3 * 1e-7, 123456789.123, 6.02214076e23, 1e-320, 4.9e-324};
        for (double d : samples) {
            assertEquals(d, (Double) Json.parse(Json.write(d, false)), 0.0);
        }
    }

    @Test
    void typedAccessorsNameKeyAndType() {
        Map<String, Object> m = Json.parseObject("{\"i\":3,\"s\":\"x\",\"d\":2,\"b\":true,\"big\":5000000000,\"n\":null}");
        assertEquals(3, Json.getInt(m, "i", 0));
        assertEquals(7, Json.getInt(m, "missing", 7));
        assertEquals(7, Json.getInt(m, "n", 7));
        assertEquals(2.0, Json.getDouble(m, "d", 0));
        assertEquals("x", Json.getString(m, "s", null));
        assertTrue(Json.getBoolean(m, "b", false));
        JsonException e = assertThrows(JsonException.class, () -> Json.getInt(m, "s", 0));
        assertEquals("key 's' must be an integer, got string \"x\"", e.getMessage());
        e = assertThrows(JsonException.class, () -> Json.getInt(m, "big", 0));
        assertTrue(e.getMessage().contains("'big' = 5000000000 does not fit"), e.getMessage());
        e = assertThrows(JsonException.class, () -> Json.getBoolean(m, "i", false));
        assertEquals("key 'i' must be a boolean, got integer 3", e.getMessage());
        assertThrows(JsonException.class, () -> Json.getObject(m, "i"));
        assertThrows(JsonException.class, () -> Json.getList(m, "i"));
    }
}

package dev.sparkmoe.gpu.comm;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class JobSecretTest {

    @TempDir
    Path tmp;

    private static byte[] mac(JobSecret s) {
        return s.hmac(new byte[] {1, 2, 3});
    }

    @Test
    void encodeDecodeRoundTripAndRedactedToString() {
        JobSecret s = JobSecret.generate();
        assertEquals(JobSecret.DEFAULT_BYTES, s.length());
        JobSecret back = JobSecret.decode(s.encode());
        assertArrayEquals(mac(s), mac(back));
        assertTrue(!s.toString().contains(s.encode()) && s.toString().contains("redacted"), s.toString());
    }

    @Test
    void fileIsOwnerOnlyAndRoundTrips() throws Exception {
        JobSecret s = JobSecret.generate();
        Path f = s.writeTo(tmp.resolve("secret"));
        assertEquals("rw-------", PosixFilePermissions.toString(Files.getPosixFilePermissions(f)));
        assertArrayEquals(mac(s), mac(JobSecret.readFrom(f)));
        Path t = s.writeTempFile();
        try {
            assertEquals("rw-------", PosixFilePermissions.toString(Files.getPosixFilePermissions(t)));
            assertArrayEquals(mac(s), mac(JobSecret.fromEnvironment(Map.of(JobSecret.ENV_FILE, t.toString()))));
        } finally {
            Files.delete(t);
        }
        assertThrows(IllegalStateException.class, () -> s.writeTo(f), "refuses to overwrite");
    }

    @Test
    void groupReadableFileIsRejected() throws Exception {
        Path f = JobSecret.generate().writeTo(tmp.resolve("open"));
        Files.setPosixFilePermissions(f, PosixFilePermissions.fromString("rw-r--r--"));
        IllegalStateException e = assertThrows(IllegalStateException.class, () -> JobSecret.readFrom(f));
        assertTrue(e.getMessage().contains("chmod 600"), e.getMessage());
    }

    @Test
    void shortOrMalformedSecretsAreRejectedWithoutEchoingThem() {
        assertThrows(IllegalArgumentException.class, () -> JobSecret.of(new byte[15]));
        String bad = "not*base64*at*all*but*secret*ish";
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> JobSecret.decode(bad));
        assertTrue(!e.getMessage().contains(bad), e.getMessage());
        IllegalStateException none = assertThrows(IllegalStateException.class, () -> JobSecret.fromEnvironment(Map.of()));
        assertTrue(none.getMessage().contains(JobSecret.ENV) && none.getMessage().contains(JobSecret.ENV_FILE));
    }

    @Test
    void differentSecretsGiveDifferentMacs() {
        assertTrue(!java.util.Arrays.equals(mac(JobSecret.generate()), mac(JobSecret.generate())));
    }
}

"""OAuth 1.0a signing against the specification's own example."""
from services.enrollment.adapters.oauth1 import authorization_header, hmac_sha1_signature, signature_base_string


def test_rfc5849_example_signature():
    header = authorization_header(
        "GET", "http://photos.example.net/photos?file=vacation.jpg&size=original",
        consumer_key="dpf43f3p2l4k3l03", consumer_secret="kd94hf93k423kf44",
        token="nnch734d00sl2jdk", token_secret="pfkkdhi9sl3r4s00",
        timestamp="1191242096", nonce="kllo9940pd9333jh", realm=None,
    )
    assert 'oauth_signature="tR3%2BTy81lMeYAr%2FFid0kMTYa%2FWM%3D"' in header


def test_base_string_and_signature_parts():
    params = [("oauth_consumer_key", "dpf43f3p2l4k3l03"), ("oauth_token", "nnch734d00sl2jdk"),
              ("oauth_signature_method", "HMAC-SHA1"), ("oauth_timestamp", "1191242096"),
              ("oauth_nonce", "kllo9940pd9333jh"), ("oauth_version", "1.0")]
    base = signature_base_string("GET", "http://Photos.example.net:80/photos?size=original&file=vacation.jpg", params)
    assert base == (
        "GET&http%3A%2F%2Fphotos.example.net%2Fphotos&file%3Dvacation.jpg%26oauth_consumer_key%3Ddpf43f3p2l4k3l03"
        "%26oauth_nonce%3Dkllo9940pd9333jh%26oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp%3D1191242096"
        "%26oauth_token%3Dnnch734d00sl2jdk%26oauth_version%3D1.0%26size%3Doriginal"
    )
    assert hmac_sha1_signature(base, "kd94hf93k423kf44", "pfkkdhi9sl3r4s00") == "tR3+Ty81lMeYAr/Fid0kMTYa/WM="


def test_apple_header_has_realm_and_fresh_nonces():
    kwargs = dict(consumer_key="CK_1", consumer_secret="CS_1", token="AT_1", token_secret="AS_1")
    first = authorization_header("GET", "https://mdmenrollment.apple.com/session", **kwargs)
    second = authorization_header("GET", "https://mdmenrollment.apple.com/session", **kwargs)
    assert first.startswith('OAuth realm="ADM", oauth_consumer_key="CK_1"')
    assert first != second

"""WhatsApp exports in their users' languages (issue #22): for each language and platform a small chat in
that platform's format and language goes through the importer; what WhatsApp wrote itself must never reach
a row, the people's words must land in the right turns.

The strings are written out here as the sources in src/finetune/importers/whatsapp_locales.py give them
(not read from those tables), so a wrong table entry fails a test. Date formats follow real exports where
one was found (German `31.12.22, 21:41 - `, iOS `[31.12.22, 21:41:05]`, US `12/31/22, 9:41 PM - `,
Indonesian `21.41`, Arabic iOS with Arabic-Indic digits); the others are plausible for the locale.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from finetune.importers.conversations import ImportOptions, Stats, chat_rows
from finetune.importers.whatsapp import read_whatsapp

NNBSP, NBSP, LRM, RLM = "\u202f", "\u00a0", "\u200e", "\u200f"
ARABIC_DIGITS = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")

LANGUAGES = {
    "en": dict(android=lambda m: f"12/31/22, 9:{m:02d}{NNBSP}PM - ", ios=lambda m: f"[12/31/22, 9:{m:02d}:05{NNBSP}PM] ",
               notice="Messages and calls are end-to-end encrypted. No one outside of this chat, not even WhatsApp, "
                      "can read or listen to them. Tap to learn more.",
               created='Alice created group "Trip: 2023"', media_a="<Media omitted>", media_i="image omitted",
               deleted="This message was deleted", you_deleted="You deleted this message",
               edited="<This message was edited>", call="Missed voice call", attached="(file attached)"),
    "es": dict(android=lambda m: f"31/12/22, 9:{m:02d}{NNBSP}p.{NBSP}m. - ", ios=lambda m: f"[31/12/22, 21:{m:02d}:05] ",
               notice="Los mensajes y las llamadas están cifrados de extremo a extremo. Nadie fuera de este chat, ni "
                      "siquiera WhatsApp, puede leerlos ni escucharlos. Toca para obtener más información.",
               created='Diego creó el grupo "Viaje: Lisboa"', media_a="<Multimedia omitido>", media_i="imagen omitida",
               deleted="Se eliminó este mensaje.", you_deleted="Eliminaste este mensaje.",
               edited="<Se editó este mensaje.>", call="Llamada perdida", attached="(archivo adjunto)"),
    "pt-BR": dict(android=lambda m: f"31/12/2022 21:{m:02d} - ", ios=lambda m: f"[31/12/2022, 21:{m:02d}:05] ",
                  notice="As mensagens e as chamadas são protegidas com a criptografia de ponta a ponta e ficam somente "
                         "entre você e os participantes desta conversa. Nem mesmo o WhatsApp pode ler ou ouvi-las.",
                  created='Alice criou o grupo "Viagem: 2023"', media_a="<Mídia oculta>", media_i="imagem ocultada",
                  deleted="Mensagem apagada", you_deleted="Você apagou esta mensagem",
                  edited="<Mensagem editada>", call="Chamada de voz perdida", attached="(arquivo anexado)"),
    "pt-PT": dict(android=lambda m: f"31/12/22, 21:{m:02d} - ", ios=lambda m: f"[31/12/22, 21:{m:02d}:05] ",
                  notice="As mensagens e chamadas são encriptadas ponto a ponto. Ninguém fora desta conversa, nem mesmo "
                         "o WhatsApp, pode ler ou ouvi-las.",
                  created="Alice criou o grupo “Viagem: 2023”", media_a="<Ficheiro não revelado>",
                  media_i="imagem não revelada", deleted="Esta mensagem foi apagada.", you_deleted="Apagou esta mensagem.",
                  edited="<Esta mensagem foi editada>", call="Chamada de voz perdida", attached="(ficheiro anexado)"),
    "de": dict(android=lambda m: f"31.12.22, 21:{m:02d} - ", ios=lambda m: f"[31.12.22, 21:{m:02d}:05] ",
               notice="Nachrichten und Anrufe sind Ende-zu-Ende-verschlüsselt. Niemand außerhalb dieses Chats kann sie "
                      "lesen oder anhören, nicht einmal WhatsApp.",
               created="Alice hat die Gruppe „Reise: 2023“ erstellt.", media_a="<Medien ausgeschlossen>",
               media_i="Bild weggelassen", deleted="Diese Nachricht wurde gelöscht",
               you_deleted="Du hast diese Nachricht gelöscht.", edited="<Diese Nachricht wurde bearbeitet>",
               call="Verpasster Sprachanruf", attached="(Datei angehängt)"),
    "fr": dict(android=lambda m: f"31/12/2022 21:{m:02d} - ", ios=lambda m: f"[31/12/2022 21:{m:02d}:05] ",
               notice="Les messages et les appels sont chiffrés de bout en bout. Aucun tiers, pas même WhatsApp, ne peut "
                      "les lire ou les écouter.",
               created="Alice a créé le groupe “Voyage: 2023”", media_a="<Médias omis>", media_i="image absente",
               deleted="Ce message a été supprimé", you_deleted="Vous avez supprimé ce message",
               edited="<Ce message a été modifié>", call="Appel vocal manqué", attached="(fichier joint)"),
    "it": dict(android=lambda m: f"31/12/22, 21:{m:02d} - ", ios=lambda m: f"[31/12/22, 21:{m:02d}:05] ",
               notice="I messaggi e le chiamate sono crittografati end-to-end. Nessuno al di fuori di questa chat, "
                      "nemmeno WhatsApp, può leggerne o ascoltarne il contenuto.",
               created='Alice ha creato il gruppo "Viaggio: 2023".', media_a="<Media omessi>", media_i="immagine omessa",
               deleted="Questo messaggio è stato eliminato", you_deleted="Hai eliminato questo messaggio",
               edited="<Questo messaggio è stato modificato>", call="Chiamata vocale persa", attached="(file allegato)"),
    "nl": dict(android=lambda m: f"31-12-2022 21:{m:02d} - ", ios=lambda m: f"[31-12-2022 21:{m:02d}:05] ",
               notice="Berichten en gesprekken worden end-to-end versleuteld. Niemand buiten deze chat kan ze lezen of "
                      "beluisteren, zelfs WhatsApp niet.",
               created="Alice heeft de groep 'Reis: 2023' aangemaakt", media_a="<Media weggelaten>",
               media_i="afbeelding weggelaten", deleted="Dit bericht is verwijderd",
               you_deleted="U hebt dit bericht verwijderd", edited="<Dit bericht is bewerkt>",
               call="Gemiste spraakoproep", attached="(bestand bijgevoegd)"),
    "ru": dict(android=lambda m: f"31.12.2022, 21:{m:02d} - ", ios=lambda m: f"[31.12.2022, 21:{m:02d}:05] ",
               notice=f"Сообщения и звонки защищены сквозным шифрованием. Третьи лица, включая WhatsApp, не{NBSP}могут "
                      f"прочитать ваши сообщения или прослушать звонки. Нажмите, чтобы узнать подробнее.",
               created='Alice создал(-а) группу "Поездка: 2023"', media_a="<Без медиафайлов>",
               media_i="изображение отсутствует", deleted="Данное сообщение удалено",
               you_deleted="Вы удалили данное сообщение", edited="<Это сообщение изменено>",
               call="Пропущенный аудиозвонок", attached="(файл добавлен)"),
    "tr": dict(android=lambda m: f"31.12.2022 21:{m:02d} - ", ios=lambda m: f"[31.12.2022, 21:{m:02d}:05] ",
               notice="Mesajlar ve aramalar uçtan uca şifrelidir. WhatsApp da dahil olmak üzere bu sohbetin dışında "
                      "bulunan hiç kimse mesaj ve aramalarınızı okuyamaz ve dinleyemez.",
               created='Alice "Gezi: 2023" grubunu oluşturdu', media_a="<Medya dahil edilmedi>",
               media_i="görüntü dahil edilmedi", deleted="Bu mesaj silindi", you_deleted="Bu mesajı sildiniz",
               edited="<Bu mesaj düzenlendi>", call="Cevapsız sesli arama", attached="(dosya ekli)"),
    "id": dict(android=lambda m: f"31/12/22 21.{m:02d} - ", ios=lambda m: f"[31/12/22 21.{m:02d}.05] ",
               notice="Pesan dan panggilan terenkripsi secara end-to-end. Tidak seorang pun di luar chat ini, termasuk "
                      "WhatsApp, yang dapat membaca atau mendengarkannya.",
               created='Alice membuat grup "Liburan: 2023"', media_a="<Media tidak disertakan>",
               media_i="gambar tidak disertakan", deleted="Pesan ini dihapus", you_deleted="Anda menghapus pesan ini",
               edited="<Pesan ini diedit>", call="Panggilan suara tak terjawab", attached="(file terlampir)"),
    "ar": dict(android=lambda m: f"31/12/2022، 9:{m:02d}{NBSP}م - ",
               ios=lambda m: f"[{RLM}31{RLM}/12{RLM}/2022، 9:{m:02d}:05{NBSP}م] ".translate(ARABIC_DIGITS),
               notice="الرسائل والمكالمات مشفرة تمامًا بين الطرفين، بحيث لا يستطيع أحد خارج هذه الدردشة، ولا حتى شركة "
                      "واتساب نفسها، قراءتها أو الاستماع إليها.",
               created='Alice أنشأ مجموعة "رحلة: 2023"', media_a="<تم استبعاد الوسائط>", media_i="لم يتم إدراج الصورة",
               deleted="تم حذف هذه الرسالة.", you_deleted="لقد حذَفت هذه الرسالة.", edited=None,
               call="مكالمة صوتية فائتة", attached="(الملف مرفق)"),
    "hi": dict(android=lambda m: f"31/12/22, 9:{m:02d}{NNBSP}pm - ", ios=lambda m: f"[31/12/22, 9:{m:02d}:05{NNBSP}pm] ",
               notice="मैसेजेस और कॉल्स एंड-टू-एंड एन्क्रिप्टेड हैं. इस चैट में शामिल लोगों के अलावा कोई भी इन्हें पढ़ या सुन नहीं "
                      "सकता, WhatsApp भी नहीं.",
               created='Alice ने ग्रुप "यात्रा: 2023" बनाया', media_a="<मीडिया के बिना>", media_i="फ़ोटो हटाई गई",
               deleted="यह मैसेज डिलीट कर दिया गया है.", you_deleted="आपने यह मैसेज डिलीट किया.", edited=None,
               call="वॉइस कॉल मिस हुई", attached="(फाइल अटैच कर दी गई है)"),
}


def android_export(lang: dict) -> str:
    h = lang["android"]
    edited = f" {lang['edited']}" if lang["edited"] else ""
    return "\n".join([
        f"{h(0)}{lang['notice']}",  # system lines have no `Name: `
        f"{h(1)}{lang['created']}",  # ... even when the group's name holds `: `
        f"{h(2)}Alice: question-1?",
        f"{h(3)}Alice: {lang['media_a']}",
        f"{h(4)}Alice: {lang['deleted']}",
        f"{h(5)}Me: answer-1{edited}",
        f"{h(6)}Me: {lang['you_deleted']}",
        f"{h(7)}Alice: {lang['call']}",
        f"{h(8)}Alice: {LRM}IMG-20221231-WA0001.jpg {lang['attached']}",
        "caption-1 from Alice",  # the caption is Alice's own words
        f"{h(9)}Me: answer-2",
    ]) + "\n"


def ios_export(lang: dict, mark: str) -> str:
    """iOS attributes system lines to the chat's name (here a group called `Trip: 2023`) and marks what it
    writes itself with U+200E (U+200F in Arabic), media lines also before the `[`."""
    h = lang["ios"]
    edited = f" {mark}{lang['edited']}" if lang["edited"] else ""
    return "\r\n".join([
        f"{h(0)}Trip: 2023: {mark}{lang['notice']}",
        f"{h(1)}Trip: 2023: {mark}{lang['created']}",
        f"{h(2)}Alice: question-1?",
        f"{mark}{h(3)}Alice: {mark}{lang['media_i']}",
        f"{h(4)}Alice: {mark}{lang['deleted']}",
        f"{h(5)}Me: answer-1{edited}",
        f"{h(6)}Me: {mark}{lang['you_deleted']}",
        f"{h(7)}Alice: {mark}{lang['call']}",
        f"{mark}{h(8)}Alice: {mark}<attached: 00000012-PHOTO-2022-12-31-21-41-05.jpg>",
        f"{h(9)}Me: answer-2",
    ]) + "\r\n"


def import_text(tmp_path: Path, name: str, text: str) -> tuple[list[list[dict]], Stats]:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    stats = Stats()
    options = ImportOptions(me="Me")
    messages = read_whatsapp(path, options, None, stats)
    assert {m.sender for m in messages} == {"Alice", "Me"}  # no system line became a sender
    return [row["messages"] for row in chat_rows(messages, options, set(), stats)], stats


def never_in(rows: list[list[dict]], lang: dict, *extra: str) -> None:
    text = "\n".join(turn["content"] for row in rows for turn in row)
    for key in ("notice", "created", "media_a", "media_i", "deleted", "you_deleted", "edited", "call", "attached"):
        if lang[key]:
            assert lang[key].rstrip(".") not in text, (key, text)
    for never in ("2023", "Lisboa", "IMG-", "PHOTO", "<", LRM, RLM, *extra):
        assert never not in text, (never, text)


@pytest.mark.parametrize("code", sorted(LANGUAGES))
def test_android_export(tmp_path: Path, code: str) -> None:
    lang = LANGUAGES[code]
    rows, stats = import_text(tmp_path, "chat.txt", android_export(lang))
    assert rows == [[{"role": "user", "content": "question-1?"}, {"role": "assistant", "content": "answer-1"},
                     {"role": "user", "content": "caption-1 from Alice"}, {"role": "assistant", "content": "answer-2"}]]
    never_in(rows, lang)
    assert dict(stats.dropped) == {"system line": 2, "media omitted": 1, "deleted": 2, "missed call": 1,
                                   "attachment": 1}
    assert stats.cleaned["caption kept, media dropped"] == 1
    assert stats.cleaned["edited marker removed"] == (1 if lang["edited"] else 0)
    assert not stats.unknown


@pytest.mark.parametrize("code", sorted(LANGUAGES))
def test_ios_export(tmp_path: Path, code: str) -> None:
    lang = LANGUAGES[code]
    rows, stats = import_text(tmp_path, "_chat.txt", ios_export(lang, RLM if code == "ar" else LRM))
    # The encryption notice iOS attributes to the chat's name is not anyone's first message.
    assert rows == [[{"role": "user", "content": "question-1?"},
                     {"role": "assistant", "content": "answer-1\nanswer-2"}]]
    never_in(rows, lang, "Trip")
    assert dict(stats.dropped) == {"system line": 2, "media omitted": 2, "deleted": 2, "missed call": 1}
    assert not stats.unknown


def test_arabic_ios_times_read_with_arabic_indic_digits(tmp_path: Path) -> None:
    """`[٣١‏/١٢‏/٢٠٢٢، ٩:٠٢:٠٥ م]` is 31 Dec 2022, 21:02:05 (م = p.m.)."""
    path = tmp_path / "chat.txt"
    path.write_text(ios_export(LANGUAGES["ar"], RLM), encoding="utf-8")
    messages = read_whatsapp(path, ImportOptions(me="Me"), None, Stats())
    assert datetime.fromtimestamp(messages[0].time) == datetime(2022, 12, 31, 21, 2, 5)
